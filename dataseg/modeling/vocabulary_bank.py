"""Per-dataset vocabularies (frozen text embeddings + thing flags) for the text classifier.

Loaded lazily on first use from the dataset's metadata (``get_dataset_info``) and the text
encoder's cache (``dataseg.text.embed_vocabulary``), then kept in memory. Not an nn.Module on
purpose: vocabularies are not part of a checkpoint, so one checkpoint works with any of them.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..contract import get_dataset_info
from ..text import embed_vocabulary


class VocabularyBank:
    """name -> (embeddings (K, D) float, is_thing (K,) bool)."""

    def __init__(self, text_encoder_kwargs: Optional[dict] = None,
                 text_dim: Optional[int] = None):
        self.text_encoder_kwargs = dict(text_encoder_kwargs or {})
        self.text_dim = text_dim
        self._vocab: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._task: Dict[str, str] = {}

    def set(self, name: str, embeddings: torch.Tensor, is_thing,
            task: Optional[str] = None) -> None:
        """Installs (or overrides) a vocabulary; rows are L2-normalised here. ``task`` (optional)
        is the task inputs of this vocabulary default to when they carry no ``"task"``."""
        emb = torch.as_tensor(embeddings, dtype=torch.float32)
        thing = torch.as_tensor(is_thing, dtype=torch.bool).flatten()
        if emb.dim() != 2 or emb.shape[0] == 0:
            raise ValueError(f"vocabulary '{name}': embeddings must be (K>0, D), got "
                             f"{tuple(emb.shape)}")
        if self.text_dim is not None and emb.shape[1] != self.text_dim:
            raise ValueError(f"vocabulary '{name}': embedding dim {emb.shape[1]} != the "
                             f"model's text dim {self.text_dim}")
        if thing.numel() != emb.shape[0]:
            raise ValueError(f"vocabulary '{name}': {thing.numel()} is_thing flags for "
                             f"{emb.shape[0]} classes")
        self._vocab[name] = (F.normalize(emb, dim=1), thing)
        if task:
            self._task[name] = task
        else:
            self._task.pop(name, None)

    def task(self, name: str) -> Optional[str]:
        """The task given to ``set`` for ``name``, or None."""
        return self._task.get(name)

    def _load(self, name: str) -> None:
        info = get_dataset_info(name)
        emb = embed_vocabulary(info.class_synonyms, **self.text_encoder_kwargs)
        self.set(name, emb, info.is_thing)

    def get(self, name: str, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (embeddings, is_thing) of dataset ``name`` on ``device`` (loaded once)."""
        if name not in self._vocab:
            self._load(name)
        emb, thing = self._vocab[name]
        if device is not None and emb.device != torch.device(device):
            emb, thing = emb.to(device), thing.to(device)
            self._vocab[name] = (emb, thing)
        return emb, thing

    def __contains__(self, name: str) -> bool:
        return name in self._vocab
