"""Checkpoints that are never left half-written and that refuse a mismatched architecture.

``save`` writes to a temporary file in the same directory, fsyncs it and ``os.replace``s it
into place, then updates ``last_checkpoint`` the same way: a crash during a save leaves the
previous good checkpoint (and the pointer to it) untouched. The random-number states of
torch, numpy and Python are saved too, so a resumed run continues the same random streams.
"""
import os
import random

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from dataseg.conversion import (  # issue 23: Mask2Former / HF / torchvision / timm layouts
    ConversionError,
    ConversionShapeError,
    convert_loaded_checkpoint,
    read_weights_file,
)
from dataseg.utils.atomic import atomic_write, atomic_write_bytes

__all__ = ["AtomicCheckpointer", "CheckpointError", "CheckpointMismatchError",
           "CheckpointNotFoundError", "CheckpointReadError"]

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


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves, saved RNG states and strict shape checks."""

    missing_model_keys = None  # set by each load (see _record_missing)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data["rng_state"] = rng_state()
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

    def _load_model(self, checkpoint):
        """Refuses weights whose shapes differ from the model's (another architecture)."""
        if checkpoint.get("matching_heuristics", False):
            # Backbone weights from another codebase (e.g. ImageNet .pkl): names are matched
            # heuristically by Detectron2, partial loading is expected.
            return self._record_missing(super()._load_model(checkpoint))
        model_state = self.model.state_dict()
        self._convert_ndarray_to_tensor(checkpoint["model"])
        ckpt_state = {k[len("module."):] if k.startswith("module.") else k: v
                      for k, v in checkpoint["model"].items()}
        mismatched = []
        for key, value in ckpt_state.items():
            if key in model_state and tuple(model_state[key].shape) != tuple(value.shape):
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                                  f"{tuple(model_state[key].shape)}")
        matched = [k for k in ckpt_state if k in model_state]
        if mismatched or (ckpt_state and not matched):
            detail = "; ".join(mismatched[:10]) if mismatched else "no parameter name matches"
            raise CheckpointMismatchError(
                f"checkpoint {getattr(self, '_loading_path', '?')} does not match the model "
                f"built from the config ({len(mismatched)} shape mismatches; {detail}). Was it "
                "trained with another architecture (hidden dim, queries, backbone)?")
        return self._record_missing(super()._load_model(checkpoint))

    def _record_missing(self, incompatible):
        """Keeps the model keys the last load did not fill (``missing_model_keys``; None
        before any load), e.g. for ``load_pretrained_vit``."""
        self.missing_model_keys = (list(incompatible.missing_keys)
                                   if incompatible is not None else [])
        return incompatible

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointNotFoundError(f"checkpoint file not found: {path} (MODEL.WEIGHTS or "
                                          f"{self.save_dir}/last_checkpoint)")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        """Detectron2's loading; a file it cannot read is a one-line CheckpointReadError."""
        self._loading_path = filename
        try:
            loaded = (read_weights_file(filename) if filename.endswith(".safetensors")  # issue 23
                      else super()._load_file(filename))
        except Exception as e:
            raise CheckpointReadError(f"cannot load weights file {filename}: "
                                      f"{_unreadable_reason(filename, e)}") from None
        model = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(model, dict) or not all(
                isinstance(v, (torch.Tensor, np.ndarray)) for v in model.values()):
            raise CheckpointReadError(
                f"cannot load weights file {filename}: not a checkpoint (expected a dict with a "
                "'model' state dict of tensors, or a state dict)")
        # --- issue 23: a Mask2Former / HF transformers / torchvision / timm checkpoint is
        # converted to DaTaSeg's names here (dataseg/conversion); others pass unchanged ---
        try:
            return convert_loaded_checkpoint(loaded, filename, self.model)
        except ConversionShapeError as e:
            raise CheckpointMismatchError(str(e)) from None
        except ConversionError as e:
            raise CheckpointReadError(str(e)) from None
        # --- end issue 23 ---

    def resume_or_load(self, path, *, resume=True):
        checkpoint = super().resume_or_load(path, resume=resume)
        if resume and "rng_state" in checkpoint:
            set_rng_state(checkpoint.pop("rng_state"))
        return checkpoint
