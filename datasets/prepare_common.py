"""Helpers shared by the ``prepare_*.py`` scripts: dataset root, input checks, atomic output.

Every output file is written to a temp file in its folder and renamed into place, so an
interrupted run leaves no half-written file; a rerun skips the outputs that already exist.
"""
import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dataseg.utils.atomic import atomic_write as _atomic_write

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a nicety
    def tqdm(it, **kwargs):
        return it


def dataset_root(arg=None) -> Path:
    """``--root``, else ``$DETECTRON2_DATASETS``, else ``datasets/`` next to this script."""
    if arg:
        return Path(arg)
    env = os.environ.get("DETECTRON2_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parent


def argument_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--root", default=None,
                   help="dataset root (default: $DETECTRON2_DATASETS, else this folder)")
    return p


def require(path: Path, what: str = "input") -> Path:
    """Returns ``path`` if it exists, else exits with an error naming it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"missing {what}: {path}")
    return Path(path)


def atomic_write(path: Path, write_fn) -> None:
    """Calls ``write_fn(tmp_path)`` then renames the temp file onto ``path``."""
    _atomic_write(Path(path), write_fn, fsync=False)


def save_png(array: np.ndarray, path: Path) -> None:
    """Saves a uint8 (or uint16) label map as a lossless grayscale PNG, atomically."""
    atomic_write(Path(path), lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def read_label(path: Path) -> np.ndarray:
    """Label PNG as stored (palette indices for 'P' images, values for 'L'/'I;16')."""
    with Image.open(path) as im:
        return np.asarray(im)


def convert_all(jobs, convert, desc: str) -> int:
    """Runs ``convert(src, dst)`` for every (src, dst) whose dst is missing; returns the count."""
    jobs = list(jobs)
    todo = [(s, d) for s, d in jobs if not Path(d).exists()]
    for src, dst in tqdm(todo, desc=desc, unit="file"):
        convert(src, dst)
    print(f"{desc}: {len(todo)} written, {len(jobs) - len(todo)} already done")
    return len(todo)
