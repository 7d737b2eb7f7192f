"""Registers the synth_* datasets through dataseg.data.register, like any user dataset.

Registration writes nothing: the paths point to where the world for these parameters will be,
and each dataset is registered once, through register.py's core, with ``ensure_generated`` as its
``before_load`` hook, so the world is generated on first use (once: ``ensure_generated`` publishes
it atomically and returns at once when it exists). Calling again (e.g. with a cfg's values)
replaces the previous registrations (``replace=True``).
"""
from typing import Dict

from ..register import (
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
from .generate import ensure_generated
from .layout import SPLITS, split_paths
from .params import SyntheticWorldParams
from .vocabulary import vocabulary

# Dataset name -> (split, how it is registered).
DATASETS: Dict[str, tuple] = {
    "synth_sem_train": ("sem_train", "semantic"),
    "synth_sem_val": ("sem_val", "semantic"),
    "synth_sem_panoptic_val": ("sem_val", "panoptic"),
    "synth_pan_train": ("pan_train", "panoptic"),
    "synth_pan_val": ("pan_val", "panoptic"),
    "synth_box_train": ("box_train", "box"),
    "synth_box_val_instance": ("box_val", "instance"),
    "synth_unseen_sem_val": ("unseen_val", "semantic"),
}


class _GenerateIfMissing:
    """``before_load`` hook of every synth_* dataset: generates the world for ``params`` if it
    is not on disk yet (a plain object, so it pickles into subprocesses with the params)."""

    def __init__(self, params: SyntheticWorldParams):
        self.params = params

    def __call__(self) -> None:
        ensure_generated(self.params)


def _register(name: str, split: str, how: str, params: SyntheticWorldParams) -> None:
    spec = next(s for s in SPLITS if s.split == split)
    paths = split_paths(params.world_dir(), spec)
    vocab = vocabulary(spec.domain)
    extra = {"synthetic_world": params.fingerprint(), "replace": True,
             "before_load": _GenerateIfMissing(params)}
    if how == "semantic":
        register_semantic_dataset(name, paths.image_root, paths.sem_seg_root, list(vocab.names),
                                  is_thing=list(vocab.is_thing), **extra)
    elif how == "panoptic":
        sem_root = paths.sem_seg_root  # semantic PNGs exist for sem_val (same stems)
        register_panoptic_dataset(name, paths.image_root, paths.panoptic_root,
                                  paths.panoptic_json, vocab.categories(),
                                  sem_seg_root=sem_root, **extra)
    elif how == "instance":
        register_instance_dataset(name, paths.image_root, paths.json_file,
                                  vocabulary(spec.domain, things_only=True).categories(), **extra)
    elif how == "box":
        register_box_dataset(name, paths.image_root, paths.json_file,
                             vocabulary(spec.domain, things_only=True).categories(), **extra)
    else:  # pragma: no cover - DATASETS is fixed above
        raise ValueError(how)


def register_synthetic_world(params=None) -> SyntheticWorldParams:
    """(Re-)registers every synth_* dataset for ``params`` (SyntheticWorldParams, a Detectron2
    cfg with DATASETS.SYNTHETIC, or None for the defaults). Writes nothing."""
    params = SyntheticWorldParams.coerce(params)
    for name, (split, how) in DATASETS.items():
        _register(name, split, how, params)
    return params
