"""Checkpoints that are never left half-written and that refuse a mismatched architecture.

``save`` writes to a temporary file in the same directory, fsyncs it and ``os.replace``s it
into place, then updates ``last_checkpoint`` the same way: a crash during a save leaves the
previous good checkpoint (and the pointer to it) untouched. The random-number states of
torch, numpy and Python are saved too, so a resumed run continues the same random streams: with
several processes, every rank's (gathered by the trainer before each periodic save, see
``AtomicCheckpointer.rank_rng_states``), and each rank of a resumed run takes its own back.
"""
import os
import pickle
import random

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

from dataseg.conversion import (  # issue 23: Mask2Former / HF / torchvision / timm layouts
    ConversionError,
    ConversionShapeError,
    convert_state_dict,
    detect_layout,
    read_weights_file,
)
from dataseg.utils.atomic import atomic_write, atomic_write_bytes

__all__ = ["AtomicCheckpointer", "CheckpointError", "CheckpointMismatchError",
           "CheckpointNotFoundError", "CheckpointReadError", "check_weights_fit", "read_weights"]

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


def read_weights(filename):
    """The weights a checkpoint file holds, as ``(state dict, matched_by_heuristics)``, read the
    way Detectron2's checkpointer reads them: a ``.pkl`` is a Detectron2 model-zoo pickle (a
    dict with ``model``; ``matching_heuristics`` tells whether its names are matched by
    heuristics) or a Caffe2-style blob dict (always matched by heuristics); anything else is a
    ``torch.save`` file holding ``{"model": state}`` or a bare state dict (memory-mapped here,
    so this read costs little). An unreadable file is a one-line :class:`CheckpointReadError`."""
    try:
        if filename.endswith(".pkl"):
            with open(filename, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            if isinstance(data, dict) and "model" in data and "__author__" in data:
                return data["model"], bool(data.get("matching_heuristics", False))
            blobs = data.get("blobs", data) if isinstance(data, dict) else data
            return blobs, True
        try:
            data = torch.load(filename, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            data = torch.load(filename, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointReadError(f"cannot load weights file {filename}: "
                                  f"{_unreadable_reason(filename, e)}") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()):
        raise CheckpointReadError(
            f"cannot load weights file {filename}: not a checkpoint (expected a dict with a "
            "'model' state dict of tensors, or a state dict)")
    return state, bool(isinstance(data, dict) and data.get("matching_heuristics", False))


def check_weights_fit(model, weights, path):
    """Refuses weights whose shapes differ from the model's, or of which no name matches (a
    checkpoint of another architecture): :class:`CheckpointMismatchError` naming ``path``.
    Returns the model keys the weights do not hold."""
    model_state = getattr(model, "module", model).state_dict()
    ckpt_state = _strip_module(weights)
    mismatched = [f"{key}: checkpoint {tuple(value.shape)} vs model "
                  f"{tuple(model_state[key].shape)}"
                  for key, value in ckpt_state.items()
                  if key in model_state and tuple(model_state[key].shape) != tuple(value.shape)]
    matched = [k for k in ckpt_state if k in model_state]
    if mismatched or (ckpt_state and not matched):
        detail = "; ".join(mismatched[:10]) if mismatched else "no parameter name matches"
        raise CheckpointMismatchError(
            f"checkpoint {path} does not match the model built from the config "
            f"({len(mismatched)} shape mismatches; {detail}). Was it trained with another "
            "architecture (hidden dim, queries, backbone)?")
    return [k for k in model_state if k not in ckpt_state]


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves, saved RNG states and strict shape checks."""

    missing_model_keys = None  # set by each load (see load)
    # (iteration, [RNG states of rank 0, 1, ...]): set by the trainer just before the periodic
    # save of that iteration, which stores the list as ``rank_rng_states``
    rank_rng_states = None

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

    def load(self, path, *args, **kwargs):
        """Detectron2's ``load``, after reading the file once to check it: a file that is not
        there or not a checkpoint, or whose weights do not fit the model, stops here with one
        line (:class:`CheckpointError`) before the model is touched. ``missing_model_keys``
        becomes the model keys the file does not hold (None when unknown: before any load, and
        for Detectron2 ``.pkl`` files matched by name heuristics, e.g. ImageNet backbones)."""
        self.missing_model_keys = None
        if path:
            local = path if "://" not in path else self.path_manager.get_local_path(path)
            if not os.path.isfile(local):
                raise CheckpointNotFoundError(f"checkpoint file not found: {path} (MODEL.WEIGHTS "
                                              f"or {self.save_dir}/last_checkpoint)")
            # --- issue 23: a Mask2Former / HF transformers / torchvision / timm checkpoint
            # is converted to DaTaSeg's names and loaded here (dataseg/conversion) ---
            if local.endswith(".safetensors"):
                return self.load_converted(local, path)
            weights, by_heuristics = read_weights(local)
            if detect_layout(weights) is not None:
                return self.load_converted(local, path, weights)
            # --- end issue 23 ---
            if not by_heuristics:
                self.missing_model_keys = check_weights_fit(self.model, weights, path)
        return super().load(path, *args, **kwargs)

    def load_converted(self, local, path, weights=None):
        """Issue 23: loads a checkpoint in another codebase's layout (``weights``: its state
        dict, read from ``local`` when None) after converting it (``dataseg.conversion``;
        the report is logged). A file that is not one, or a tensor that does not fit the model,
        is one line (:class:`CheckpointReadError`, :class:`CheckpointMismatchError`).
        Returns ``{"conversion_report": report}``."""
        try:
            if weights is None:
                weights = read_weights_file(local)["model"]
            state, report = convert_state_dict(weights, path, self.model)
        except ConversionShapeError as e:
            raise CheckpointMismatchError(str(e)) from None
        except ConversionError as e:
            raise CheckpointReadError(str(e)) from None
        self.logger.info("[Checkpointer] Loading converted weights from %s", path)
        self.model.load_state_dict(state, strict=False)
        self.missing_model_keys = list(report.missing)
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
