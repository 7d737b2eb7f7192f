"""Per-dataset vocabularies (frozen text embeddings + thing flags) for the text classifier.

A registered dataset's vocabulary comes from its metadata (``dataseg.contract.get_dataset_info``)
embedded by the text embedder injected at build time (``dataseg.text.TextEmbedder``), either
up front (``preload``: the trainer does it for DATASETS.TRAIN right after building the model) or on
first use, then kept in memory. Not an nn.Module on
purpose: vocabularies are not part of a checkpoint, so one checkpoint works with any of them.
"""
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from ..contract import get_dataset_info
from ..text import TextEmbedder


class VocabularyBank:
    """name -> (embeddings (K, D) float, is_thing (K,) bool)."""

    def __init__(self, embedder: Optional[Callable[..., torch.Tensor]] = None,
                 text_dim: Optional[int] = None):
        """``embedder``: class_synonyms (list of lists of names) -> (K, D) embeddings; default
        ``TextEmbedder()`` (the default text encoder settings)."""
        self.embedder = embedder if embedder is not None else TextEmbedder()
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
        self.set(name, self.embedder(info.class_synonyms), info.is_thing)

    def preload(self, names: Iterable[str]) -> None:
        """Embeds the registered datasets ``names`` now (those not yet in the bank), so that the
        first forward on them loads no text encoder and reads no cache."""
        for name in names:
            if name not in self._vocab:
                self._load(name)

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
