"""Checkpoints that are never left half-written and that refuse a mismatched architecture.

``save`` writes to a temporary file in the same directory, fsyncs it and ``os.replace``s it
into place, then updates ``last_checkpoint`` the same way: a crash during a save leaves the
previous good checkpoint (and the pointer to it) untouched. The random-number states of
torch, numpy and Python are saved too, so a resumed run continues the same random streams: with
several processes, every rank's (gathered by the trainer before each periodic save, see
``AtomicCheckpointer.rank_rng_states``), and each rank of a resumed run takes its own back.
"""
import logging
import os
import pickle
import random
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

from dataseg.conversion import (  # issue 23: Mask2Former / HF / torchvision / timm layouts
    ConversionError,
    ConversionShapeError,
    convert_state_dict,
    detect_layout,
)
from dataseg.utils.atomic import atomic_write, atomic_write_bytes

__all__ = ["AtomicCheckpointer", "CheckpointError", "CheckpointMismatchError",
           "CheckpointNotFoundError", "CheckpointReadError", "LoadReport", "classify_weights",
           "initial_weights_text", "read_weights"]

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


class CheckpointError(RuntimeError):
    """A weights file that cannot be used; the message names it (one line)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's weights do not fit the model built from the config."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """MODEL.WEIGHTS (or last_checkpoint's target) does not exist."""


class CheckpointReadError(CheckpointError):
    """The file is unreadable, truncated, or not a checkpoint."""


def _unreadable_reason(filename, error) -> str:
    """Why torch.load failed, in words (never the advice to load with weights_only=False,
    which would let an untrusted file run code)."""
    with open(filename, "rb") as f:
        head = f.read(4)
    size = os.path.getsize(filename)
    if size == 0:
        return "the file is empty"
    if filename.endswith(".pkl"):
        return (f"a truncated or corrupt pickle ({size} bytes; {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'})")
    if filename.endswith(".safetensors"):
        return (f"a truncated or corrupt safetensors file ({size} bytes; "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__})")
    if head == _ZIP_MAGIC and "Unsupported global" in str(error):
        return ("it holds Python objects other than tensors and plain values, which are not "
                "loaded from a file that could run code; re-save it as a state dict")
    if head == _ZIP_MAGIC:
        return (f"a truncated or corrupt PyTorch checkpoint ({size} bytes; was its copy or save "
                "interrupted?)")
    return (f"not a PyTorch checkpoint ({size} bytes starting with {head!r}; expected a "
            "torch.save file, or a Detectron2 .pkl)")


def rng_state():
    """RNG states as tensors and plain Python values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _strip_module(state):
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _read_file(filename):
    """``(data, state)``: what the file holds and the state dict in it (see read_weights)."""
    if filename.endswith(".safetensors"):
        from safetensors.torch import load_file

        data = load_file(filename)
    elif filename.endswith(".pkl"):
        with open(filename, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        if not (isinstance(data, dict) and "model" in data and "__author__" in data):
            # a Caffe2-style blob dict (Detectron2's ImageNet backbones): names matched by
            # heuristics, as Detectron2's checkpointer reads them
            blobs = data.get("blobs", data) if isinstance(data, dict) else data
            if isinstance(blobs, dict):
                blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            data = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
    else:
        try:
            data = torch.load(filename, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            data = torch.load(filename, map_location="cpu", weights_only=True)
    return data


def read_weights(filename):
    """The one reader of weights files (MODEL.WEIGHTS, tools/convert_checkpoint.py):
    ``(checkpoint, state)`` where ``checkpoint`` is the dict the file holds (with ``"model"``:
    the state dict, plus optimizer, scheduler, iteration, RNG states for a DaTaSeg training
    checkpoint) and ``state`` the state dict {name: tensor or array}.

    Formats: a ``.pkl`` is a Detectron2 model-zoo pickle (a dict with ``model`` and
    ``__author__``; ``matching_heuristics`` tells whether its names are matched by heuristics)
    or a Caffe2-style blob dict (always matched by heuristics), unpickled as Detectron2 does (a
    pickle can run code: only load files you trust); ``.safetensors``; anything else is a
    ``torch.save`` file read with ``weights_only=True`` (no code runs; memory-mapped, so this
    read costs little) holding ``{"model": state}``, ``{"state_dict": state}`` or a bare state
    dict. A missing file is :class:`CheckpointNotFoundError`, an unreadable one a one-line
    :class:`CheckpointReadError` ("cannot load weights file FILE: why")."""
    if not os.path.isfile(filename):
        raise CheckpointNotFoundError(f"weights file not found: {filename}")
    try:
        data = _read_file(filename)
    except Exception as e:  # noqa: BLE001  (any reader error is "unreadable", in one line)
        raise CheckpointReadError(f"cannot load weights file {filename}: "
                                  f"{_unreadable_reason(filename, e)}") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        checkpoint = data
    elif isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        checkpoint = {k: v for k, v in data.items() if k != "state_dict"}
        checkpoint["model"] = data["state_dict"]
    elif isinstance(data, dict) and "model" not in data:
        checkpoint = {"model": data}
    else:
        checkpoint = None
    state = checkpoint["model"] if checkpoint is not None else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()):
        raise CheckpointReadError(
            f"cannot load weights file {filename}: not a checkpoint (expected a dict with a "
            "'model' or 'state_dict' state dict of tensors, or a state dict)")
    return checkpoint, state


def _examples(keys, n=3):
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _groups(keys, depth=2):
    """``"pixel_decoder.input_proj.* (12), ..."``: keys counted by their first names."""
    counts = {}
    for k in keys:
        top = ".".join(k.split(".")[:depth])
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{g}.* ({n})" for g, n in counts.items())


@dataclass
class LoadReport:
    """What ``AtomicCheckpointer.load`` loaded: ``kind`` ("full": a checkpoint of this model,
    "partial": MODEL.DATASEG.WEIGHTS_PARTIAL's matching tensors, "backbone": backbone weights
    only, "converted": another codebase's layout, "none": MODEL.WEIGHTS empty), the file,
    ``loaded`` model keys filled from it, ``missing`` model keys left at initialisation,
    ``unused`` file keys not loaded."""
    kind: str
    path: str = ""
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.kind == "none":
            return "MODEL.WEIGHTS is empty: no checkpoint loaded"
        if self.kind == "backbone":
            return (f"loaded backbone weights from {self.path}: {len(self.loaded)} tensors; the "
                    f"rest initialised ({len(self.missing)} tensors)"
                    + (f"; not used from the file: {len(self.unused)} "
                       f"({_examples(self.unused)})" if self.unused else ""))
        if self.kind == "partial":
            total = len(self.loaded) + len(self.missing)
            return (f"loaded {len(self.loaded)} of the model's {total} tensors from "
                    f"{self.path} (MODEL.DATASEG.WEIGHTS_PARTIAL); left at "
                    f"initialisation: {_groups(self.missing) or 'none'}; not used from the file: "
                    f"{len(self.unused)}" + (f" ({_examples(self.unused)})" if self.unused else ""))
        return f"loaded {self.kind} checkpoint {self.path}: {len(self.loaded)} tensors"


def classify_weights(model_state, state, path, partial=False, by_heuristics=False,
                     caffe2_names=False):
    """Decides what a state dict is for ``model_state`` (the model's state dict) and returns
    ``(state to load, LoadReport)``; raises a one-line :class:`CheckpointMismatchError` for
    a file the model cannot take.

    * a full DaTaSeg checkpoint (it has keys of the model's modules other than the backbone:
      pixel decoder, decoder, ...) must hold every model key with the model's shape and no key
      the model lacks; otherwise the error names the first keys that differ and how many,
      unless ``partial`` (MODEL.DATASEG.WEIGHTS_PARTIAL) loads the tensors that fit and the
      report lists the rest;
    * a backbone-only file (names of the model's ``backbone.*``, given with that prefix, without
      it, or matched by Detectron2's heuristics for ``.pkl`` model-zoo files, ``by_heuristics``,
      with Caffe2 blob names renamed first, ``caffe2_names``) loads the backbone;
      a backbone tensor of another shape is an error;
    * a file with no name of the model is an error ("matches neither").
    """
    state = _strip_module(state)
    if by_heuristics:
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        tensors = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                   for k, v in state.items()}
        aligned = align_and_update_state_dicts(model_state, tensors, c2_conversion=caffe2_names)
        matched = {k: v for k, v in aligned.items() if k in model_state}
        taken = {id(v) for v in matched.values()}
        unused = [k for k, v in tensors.items() if id(v) not in taken] if matched else []
        state = matched or tensors
    else:
        state = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                 for k, v in state.items()}
        unused = []
    heads = {k.split(".")[0] for k in model_state} - {"backbone"}
    full = any(k.split(".")[0] in heads for k in state)
    prefix = ""  # what was put in front of the file's names
    if not full and not any(k in model_state for k in state):
        prefixed = {"backbone." + k: v for k, v in state.items()}
        if any(k in model_state for k in prefixed):
            state, prefix = prefixed, "backbone."
    inside = [k for k in state if k in model_state]
    if not inside:
        raise CheckpointMismatchError(
            f"checkpoint {path} matches neither the model built from the config nor its "
            f"backbone: none of its {len(state)} tensor names is one of the model's (file: "
            f"{_examples(sorted(state))}; model: {_examples(sorted(model_state))})")
    shapes = [k for k in inside if tuple(state[k].shape) != tuple(model_state[k].shape)]
    shape_text = "; ".join(f"{k}: checkpoint {tuple(state[k].shape)} vs model "
                           f"{tuple(model_state[k].shape)}" for k in shapes[:3])
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    if full:
        if (missing or unexpected or shapes) and not partial:
            parts = []
            if missing:
                parts.append(f"{len(missing)} model keys missing from it ({_examples(missing)})")
            if unexpected:
                parts.append(f"{len(unexpected)} keys the model lacks ({_examples(unexpected)})")
            if shapes:
                parts.append(f"{len(shapes)} shape mismatches ({shape_text})")
            raise CheckpointMismatchError(
                f"checkpoint {path} does not match the model built from the config: "
                f"{'; '.join(parts)}. Was it trained with another architecture (backbone, "
                "hidden dim, queries)? MODEL.DATASEG.WEIGHTS_PARTIAL True loads the tensors "
                "that fit on purpose (fine-tuning with a new head)")
        fits = [k for k in inside if k not in shapes]
        kind = "partial" if (missing or unexpected or shapes) else "full"
        report = LoadReport(kind, path, fits, missing + shapes, unexpected + shapes)
        return {k: state[k] for k in fits}, report
    outside = [k for k in inside if not k.startswith("backbone.")]
    if shapes and not partial:
        raise CheckpointMismatchError(
            f"backbone weights {path} do not fit the backbone built from the config: "
            f"{len(shapes)} shape mismatches ({shape_text}). Another depth or width?")
    fits = [k for k in inside if k not in shapes]
    report = LoadReport("backbone" if not outside else "partial", path, fits,
                        [k for k in model_state if k not in fits],
                        unused + [k[len(prefix):] for k in unexpected + shapes])
    return {k: state[k] for k in fits}, report


def initial_weights_text(cfg) -> str:
    """What a model built from ``cfg`` holds before MODEL.WEIGHTS: the backbone's own
    pretrained weights, if the config loads any, else "initialised from scratch"."""
    name = cfg.MODEL.BACKBONE.NAME
    if "efficientnet" in name and cfg.MODEL.EFFICIENTNET.PRETRAINED:
        return ("the backbone holds the packaged ImageNet EfficientNet-Lite0 weights "
                "(MODEL.EFFICIENTNET.PRETRAINED); the rest initialised")
    if "vitdet" in name and cfg.MODEL.VIT.WEIGHTS:
        return (f"a training start loads the ViT trunk from MODEL.VIT.WEIGHTS "
                f"{cfg.MODEL.VIT.WEIGHTS}; the rest initialised")
    return "the model is initialised from scratch"


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves, saved RNG states and loads that say what they
    loaded (see ``load``). ``partial``: MODEL.DATASEG.WEIGHTS_PARTIAL; ``initial``: what the
    model holds when MODEL.WEIGHTS is empty (``initial_weights_text``), for the log line."""

    missing_model_keys = None  # set by each load (see load)
    load_report = None  # the LoadReport of the last load
    # (iteration, [RNG states of rank 0, 1, ...]): set by the trainer just before the periodic
    # save of that iteration, which stores the list as ``rank_rng_states``
    rank_rng_states = None

    def __init__(self, model, save_dir="", *, partial=False, initial="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.partial = bool(partial)
        self.initial = initial

    @classmethod
    def from_cfg(cls, model, cfg, save_dir="", **kwargs):
        """The checkpointer of a model built from ``cfg`` (MODEL.DATASEG.WEIGHTS_PARTIAL)."""
        return cls(model, save_dir, partial=cfg.MODEL.DATASEG.WEIGHTS_PARTIAL,
                   initial=initial_weights_text(cfg), **kwargs)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data["rng_state"] = rng_state()
        if self.rank_rng_states is not None:
            gathered_at, states = self.rank_rng_states
            # the periodic save of that iteration, or Detectron2's final save after training
            # (no iteration given; nothing drew random numbers since the last step's gather)
            if kwargs.get("iteration", gathered_at) == gathered_at:
                data["rank_rng_states"] = states
        data.update(kwargs)
        final = os.path.join(self.save_dir, f"{name}.pth")
        self.remove_stale_temp_files()
        atomic_write(final, lambda tmp: torch.save(data, tmp))
        self.logger.info("Saved checkpoint to %s", final)
        self.tag_last_checkpoint(os.path.basename(final))

    def remove_stale_temp_files(self):
        """Removes checkpoint temp files (``.<name>.pth.*.tmp``) a killed save left behind."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return
        for fn in os.listdir(self.save_dir):
            if fn.startswith(".") and fn.endswith(".tmp") and ".pth." in fn:
                try:
                    os.unlink(os.path.join(self.save_dir, fn))
                    self.logger.info("Removed %s, left by an interrupted checkpoint save", fn)
                except OSError:
                    pass

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"),
                           last_filename_basename.encode())

    def load(self, path, checkpointables=None):
        """Reads ``path`` once and loads what fits, saying in one log line what was loaded
        (``load_report``; ``missing_model_keys``: the model keys left at initialisation).
        A file that is not there or not a checkpoint, or whose weights do not fit the model
        (see ``classify_weights``), stops here with one line (:class:`CheckpointError`) before
        the model is touched. Then the checkpointables (optimizer, scheduler, trainer) it
        holds, as Detectron2's ``Checkpointer.load``; returns the rest of the checkpoint
        (iteration, RNG states). An empty ``path`` loads nothing and says what the model
        holds instead of Detectron2's "Initializing model from scratch"."""
        self.missing_model_keys = None
        if not path:
            self.load_report = LoadReport("none")
            logger.info("No checkpoint loaded (MODEL.WEIGHTS is empty): %s",
                        self.initial or "the model keeps its initialisation")
            return {}
        local = path if "://" not in path else self.path_manager.get_local_path(path)
        if not os.path.isfile(local):
            raise CheckpointNotFoundError(f"checkpoint file not found: {path} (MODEL.WEIGHTS "
                                          f"or {self.save_dir}/last_checkpoint)")
        checkpoint, state = read_weights(local)
        # issue 23: a Mask2Former / HF transformers / torchvision / timm checkpoint is
        # converted to DaTaSeg's names and loaded here (dataseg/conversion)
        if detect_layout(state) is not None:
            return self.load_converted(local, path, state)
        to_load, report = classify_weights(
            self.model.state_dict(), state, path, partial=self.partial,
            by_heuristics=bool(checkpoint.get("matching_heuristics", False)),
            caffe2_names=checkpoint.get("__author__", None) == "Caffe2")
        self.model.load_state_dict(to_load, strict=False)
        self.load_report, self.missing_model_keys = report, list(report.missing)
        logger.info("%s", report.summary())
        checkpoint = {k: v for k, v in checkpoint.items() if k != "model"}
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                logger.info("Loading %s from %s", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    def load_converted(self, local, path, weights):
        """Issue 23: loads a checkpoint in another codebase's layout (``weights``: its state
        dict) after converting it (``dataseg.conversion``; the report is logged). A file that
        is not one, or a tensor that does not fit the model, is one line
        (:class:`CheckpointReadError`, :class:`CheckpointMismatchError`).
        Returns ``{"conversion_report": report}``."""
        try:
            state, report = convert_state_dict(weights, path, self.model)
        except ConversionShapeError as e:
            raise CheckpointMismatchError(str(e)) from None
        except ConversionError as e:
            raise CheckpointReadError(str(e)) from None
        self.logger.info("[Checkpointer] Loading converted weights from %s", path)
        self.model.load_state_dict(state, strict=False)
        self.missing_model_keys = list(report.missing)
        kind = "backbone" if report.layout == "resnet" else "converted"
        self.load_report = LoadReport(kind, path, list(state), list(report.missing),
                                      list(report.unused))
        if kind == "backbone":
            logger.info("%s", self.load_report.summary())
        return {"conversion_report": report}

    def resume_or_load(self, path, *, resume=True):
        """Detectron2's, then (when resuming) the RNG states: this rank's own where the
        checkpoint holds every rank's from a run of the same world size, else rank 0 takes the
        saved ones and other ranks keep their fresh seeds (``SEED + rank``)."""
        checkpoint = super().resume_or_load(path, resume=resume)
        per_rank = checkpoint.pop("rank_rng_states", None)
        if resume and "rng_state" in checkpoint:
            rank, world = comm.get_rank(), comm.get_world_size()
            if per_rank is not None and len(per_rank) == world:
                set_rng_state(per_rank[rank])
            elif rank == 0:
                set_rng_state(checkpoint["rng_state"])
            else:
                self.logger.warning(
                    "the checkpoint holds no random-number state for rank %d of %d (saved by "
                    "a run of %s processes): its random streams restart from its seed", rank,
                    world, len(per_rank) if per_rank is not None else "an unknown number of")
            checkpoint.pop("rng_state")
        return checkpoint
