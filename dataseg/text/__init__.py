"""Frozen text embeddings of category names: DaTaSeg's classifier weights.

``embed_vocabulary`` encodes every class as the mean over its synonyms x prompt templates of
L2-normalised sentence embeddings, L2-normalised again, and caches the result on disk so that a
cache hit never loads the encoder. A ``TextEmbedder`` (one encoder setting) embeds a
``dataseg.vocabulary.Vocabulary`` and answers whether it is already in the cache
(``is_cached``): callers never build cache paths.
"""
import logging
import os
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..vocabulary import Vocabulary
from . import cache as _cache
from .encoders import ENCODERS, embedding_dim, encoder_identity, load_encoder

__all__ = ["DEFAULT_TEMPLATES", "ENCODERS", "TextEmbedder", "embed_vocabulary", "embedding_dim",
           "text_embedder_from_cfg", "text_encoder_kwargs_from_cfg", "normalize_synonyms",
           "cache_entry_path"]

logger = logging.getLogger(__name__)

# The prompt templates of the paper's recipe; also the default of
# cfg.MODEL.TEXT_ENCODER.PROMPT_TEMPLATES (dataseg/config.py reads it from here).
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "{}")


def normalize_synonyms(class_synonyms) -> List[List[str]]:
    """Validates ``list[list[str]]`` (a bare string counts as one synonym) or takes a
    ``Vocabulary``'s classes; names are stripped."""
    if isinstance(class_synonyms, Vocabulary):
        class_synonyms = class_synonyms.class_synonyms
    if isinstance(class_synonyms, str) or not isinstance(class_synonyms, Sequence):
        raise TypeError(f"class_synonyms must be a list of lists of names, got "
                        f"{type(class_synonyms).__name__}")
    if len(class_synonyms) == 0:
        raise ValueError("class_synonyms is empty: a vocabulary needs at least one class")
    out = []
    for i, syns in enumerate(class_synonyms):
        syns = [syns] if isinstance(syns, str) else syns
        if not isinstance(syns, Sequence) or not syns or not all(
                isinstance(n, str) and n.strip() for n in syns):
            raise ValueError(f"class_synonyms[{i}] = {syns!r}: expected a non-empty list of "
                             "non-empty names")
        out.append([n.strip() for n in syns])
    return out


def _check_templates(templates) -> List[str]:
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("prompt templates are empty")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' placeholder for the name")
    return templates


def _resolve(encoder, templates, clip_model, checkpoint, class_synonyms, cache_dir):
    synonyms = normalize_synonyms(class_synonyms)
    templates = _check_templates(templates)
    identity = encoder_identity(encoder, clip_model, checkpoint or "")
    key = _cache.cache_key(identity, templates, synonyms)
    return synonyms, templates, identity, key, _cache.default_cache_dir(cache_dir)


def cache_entry_path(class_synonyms, encoder="minilm", *, templates=DEFAULT_TEMPLATES,
                     clip_model="ViT-L-14", checkpoint="", cache_dir=None):
    """Where ``embed_vocabulary`` with the same arguments stores its tensor."""
    _, _, _, key, directory = _resolve(encoder, templates, clip_model, checkpoint,
                                       class_synonyms, cache_dir)
    return _cache.entry_paths(directory, key)[0]


def embed_vocabulary(class_synonyms: List[List[str]], encoder: str = "minilm", *,
                     templates: Sequence[str] = DEFAULT_TEMPLATES, clip_model: str = "ViT-L-14",
                     checkpoint: str = "",
                     cache_dir: Optional[Union[str, os.PathLike]] = None) -> torch.Tensor:
    """Returns a float32 (K, D) tensor of unit-norm class embeddings, cached on disk."""
    synonyms, templates, identity, key, directory = _resolve(
        encoder, templates, clip_model, checkpoint, class_synonyms, cache_dir)
    cached = _cache.load(directory, key, len(synonyms))
    if cached is not None:
        return cached

    model = load_encoder(encoder, clip_model, checkpoint or "")
    sentences, owner = [], []
    for k, syns in enumerate(synonyms):
        for name in syns:
            for t in templates:
                sentences.append(t.replace("{}", name))
                owner.append(k)
    sent_emb = model.encode(sentences)
    owner_t = torch.tensor(owner)
    summed = torch.zeros(len(synonyms), sent_emb.shape[1]).index_add_(0, owner_t, sent_emb)
    counts = torch.bincount(owner_t, minlength=len(synonyms)).clamp(min=1).unsqueeze(1)
    emb = F.normalize(summed / counts, dim=-1)

    try:
        path = _cache.save(directory, key, emb, {"encoder": identity, "templates": templates,
                                                 "class_synonyms": synonyms})
        logger.info("cached %d text embeddings (%s) at %s", len(synonyms), encoder, path)
    except OSError as e:  # a read-only cache must not stop training
        logger.warning("could not write the text-embedding cache in %s: %s", directory, e)
    return emb


def text_encoder_kwargs_from_cfg(cfg) -> dict:
    """Keyword arguments of ``embed_vocabulary`` from ``cfg.MODEL.TEXT_ENCODER``."""
    te = cfg.MODEL.TEXT_ENCODER
    return {"encoder": te.NAME, "templates": tuple(te.PROMPT_TEMPLATES),
            "clip_model": te.CLIP_MODEL, "checkpoint": te.CHECKPOINT,
            "cache_dir": te.CACHE_DIR or None}


class TextEmbedder:
    """Text embeddings with one fixed encoder setting: ``embedder(vocabulary) -> (K, D)``
    (``embed_vocabulary`` with these keyword arguments: cached on disk, encoder loaded on a
    cache miss only). What the model's vocabulary bank is given at build time.
    ``vocabulary``: a ``Vocabulary`` (or its ``class_synonyms``)."""

    def __init__(self, **embed_kwargs):
        self.embed_kwargs = dict(embed_kwargs)

    def __call__(self, vocabulary) -> torch.Tensor:
        return embed_vocabulary(vocabulary, **self.embed_kwargs)

    def cache_key(self, vocabulary) -> str:
        """The cache entry's key: the encoder identity, the templates and the classes."""
        return cache_entry_path(vocabulary, **self.embed_kwargs).stem

    def cache_path(self, vocabulary):
        """Where the vocabulary's embeddings are (or will be) stored."""
        return cache_entry_path(vocabulary, **self.embed_kwargs)

    def is_cached(self, vocabulary) -> bool:
        """True when embedding ``vocabulary`` needs no text encoder (a complete cache entry)."""
        path = cache_entry_path(vocabulary, **self.embed_kwargs)
        return path.is_file() and path.with_suffix(".json").is_file()

    def __repr__(self) -> str:
        return f"TextEmbedder({self.embed_kwargs})"


def text_embedder_from_cfg(cfg) -> TextEmbedder:
    """The ``TextEmbedder`` of ``cfg.MODEL.TEXT_ENCODER``."""
    return TextEmbedder(**text_encoder_kwargs_from_cfg(cfg))
