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

from dataseg.utils.atomic import atomic_write, atomic_write_bytes

__all__ = ["AtomicCheckpointer", "CheckpointMismatchError"]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's weights do not fit the model built from the config."""


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

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data["rng_state"] = rng_state()
        data.update(kwargs)
        final = os.path.join(self.save_dir, f"{name}.pth")
        atomic_write(final, lambda tmp: torch.save(data, tmp))
        self.logger.info("Saved checkpoint to %s", final)
        self.tag_last_checkpoint(os.path.basename(final))

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"),
                           last_filename_basename.encode())

    def _load_model(self, checkpoint):
        """Refuses weights whose shapes differ from the model's (another architecture)."""
        if checkpoint.get("matching_heuristics", False):
            # Backbone weights from another codebase (e.g. ImageNet .pkl): names are matched
            # heuristically by Detectron2, partial loading is expected.
            return super()._load_model(checkpoint)
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
        return super()._load_model(checkpoint)

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path} (MODEL.WEIGHTS or "
                                    f"{self.save_dir}/last_checkpoint)")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        self._loading_path = filename
        return super()._load_file(filename)

    def resume_or_load(self, path, *, resume=True):
        checkpoint = super().resume_or_load(path, resume=resume)
        if resume and "rng_state" in checkpoint:
            set_rng_state(checkpoint.pop("rng_state"))
        return checkpoint
