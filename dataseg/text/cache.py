"""On-disk cache of vocabulary embeddings so that training and evaluation never re-encode.

Each entry is ``<key>.pt`` (the KxD tensor) plus ``<key>.json`` (a small manifest saying what
was encoded). Both are written atomically (temp file + ``os.replace``), so a crash never leaves
a half-written entry that a later run would trust. The key hashes the encoder identity, the
templates and the class names, so any change to them misses the cache.
"""
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import List, Optional, Union

import torch

from dataseg.utils.atomic import atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """The argument, else ``$DATASEG_CACHE/text_embeddings``, else ``~/.cache/dataseg/...``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    root = os.environ.get("DATASEG_CACHE")
    if root:
        return Path(root).expanduser() / "text_embeddings"
    return Path.home() / ".cache" / "dataseg" / "text_embeddings"


def cache_key(identity: dict, templates: List[str], class_synonyms: List[List[str]]) -> str:
    payload = json.dumps({"v": CACHE_VERSION, "encoder": identity, "templates": list(templates),
                          "classes": [list(s) for s in class_synonyms]},
                         sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def entry_paths(cache_dir: Path, key: str):
    return cache_dir / f"{key}.pt", cache_dir / f"{key}.json"


def load(cache_dir: Path, key: str, num_classes: int) -> Optional[torch.Tensor]:
    """Returns the cached tensor, or None on a miss.

    An entry that cannot be read or does not match its manifest is reported (naming the file)
    and treated as a miss, so the caller recomputes and overwrites it.
    """
    tensor_path, manifest_path = entry_paths(cache_dir, key)
    if not tensor_path.is_file() or not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        emb = torch.load(tensor_path, map_location="cpu", weights_only=True)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
            raise ValueError("not a 2-d tensor")
        if list(emb.shape) != list(manifest["shape"]) or emb.shape[0] != num_classes:
            raise ValueError(f"shape {tuple(emb.shape)} does not match manifest "
                             f"{manifest.get('shape')} / {num_classes} classes")
        if not torch.isfinite(emb).all():
            raise ValueError("non-finite values")
    except Exception as e:
        logger.warning("corrupt text-embedding cache entry %s (%s): recomputing it",
                       tensor_path, e)
        return None
    return emb.float()


def save(cache_dir: Path, key: str, emb: torch.Tensor, manifest: dict) -> Path:
    """Writes the tensor, then the manifest (whose presence marks a complete entry)."""
    tensor_path, manifest_path = entry_paths(cache_dir, key)
    manifest = dict(manifest, shape=list(emb.shape), version=CACHE_VERSION)
    atomic_write(tensor_path, lambda f: torch.save(emb.detach().cpu().float().contiguous(), f))
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode("utf-8"))
    return tensor_path
