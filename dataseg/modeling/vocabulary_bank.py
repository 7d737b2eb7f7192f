"""Named vocabularies (frozen text embeddings + thing flags) for the text classifier.

A name is a registered dataset (its ``Vocabulary`` from its metadata through
``dataseg.contract.get_dataset_info``) or a ``dataseg.vocabulary.Vocabulary`` given with
``add`` (a run-time vocabulary: the predictor's, the config's ``TEST.VOCABULARY_FILE``). It is
embedded by the text embedder injected at build time (``dataseg.text.TextEmbedder``), either up
front (``preload``: the trainer does it for DATASETS.TRAIN right after building the model) or
on first use, then kept in memory. Not an nn.Module on purpose: vocabularies are not part of a
checkpoint, so one checkpoint works with any of them.
"""
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from ..contract import get_dataset_info
from ..text import TextEmbedder
from ..vocabulary import Vocabulary


class VocabularyBank:
    """name -> (embeddings (K, D) float, is_thing (K,) bool)."""

    def __init__(self, embedder: Optional[Callable[..., torch.Tensor]] = None,
                 text_dim: Optional[int] = None):
        """``embedder``: ``Vocabulary`` -> (K, D) embeddings; default ``TextEmbedder()`` (the
        default text encoder settings)."""
        self.embedder = embedder if embedder is not None else TextEmbedder()
        self.text_dim = text_dim
        self._vocab: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._task: Dict[str, str] = {}
        self._added: Dict[str, Vocabulary] = {}
        self._keys: Dict[str, str] = {}  # name -> Vocabulary.key of what is embedded under it

    def set(self, name: str, embeddings: torch.Tensor, is_thing,
            task: Optional[str] = None) -> None:
        """Installs (or overrides) a vocabulary; rows are L2-normalised here. ``task`` (optional)
        is the task inputs of this vocabulary default to when they carry no ``"task"``."""
        self._added.pop(name, None)
        self._install(name, embeddings, is_thing, task)

    def _install(self, name: str, embeddings, is_thing, task: Optional[str],
                 key: Optional[str] = None) -> None:
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
        if key is None:
            self._keys.pop(name, None)
        else:
            self._keys[name] = key
        if task:
            self._task[name] = task
        else:
            self._task.pop(name, None)

    def task(self, name: str) -> Optional[str]:
        """The task given to ``set`` for ``name``, or None."""
        return self._task.get(name)

    def add(self, name: str, vocabulary: Vocabulary, task: Optional[str] = None) -> None:
        """Serves ``vocabulary`` under ``name`` (embedded on first use, or by ``get``/
        ``preload``); replaces what ``name`` served before."""
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary '{name}': expected a dataseg.vocabulary.Vocabulary, "
                            f"got {type(vocabulary).__name__}")
        if self._keys.get(name) != vocabulary.key:
            self._vocab.pop(name, None)
        self._added[name] = vocabulary
        if task:
            self._task[name] = task
        else:
            self._task.pop(name, None)

    def vocabulary(self, name: str) -> Vocabulary:
        """The Vocabulary ``name`` serves: one given to ``add``, else the registered dataset's."""
        if name in self._added:
            return self._added[name]
        return get_dataset_info(name).vocabulary

    def _load(self, name: str) -> None:
        vocab = self.vocabulary(name)
        self._install(name, self.embedder(vocab), vocab.is_thing, self._task.get(name),
                      key=vocab.key)

    def is_embedded(self, vocabulary: Vocabulary) -> bool:
        """True when serving ``vocabulary`` needs no text encoder: it is embedded in this bank,
        or the embedder's cache holds it (``TextEmbedder.is_cached``)."""
        if vocabulary.key in self._keys.values():
            return True
        is_cached = getattr(self.embedder, "is_cached", None)
        return bool(is_cached is not None and is_cached(vocabulary))

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
        """True for a name embedded here or given to ``add`` (not for a dataset not yet used)."""
        return name in self._vocab or name in self._added
