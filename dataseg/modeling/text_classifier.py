"""Text-embedding classifier: class logits are dot products of a query's class embedding with
frozen L2-normalised text embeddings of the current dataset's categories, plus one shared
learnable background embedding (the last logit).

logit_k = <normalize(e), t_k> / temperature, with ``e`` the class embedding (normalised when
``normalize_class_embed``) and ``t_k`` the text embedding (the background embedding is
normalised too). The text embeddings are an input, not a parameter, so the same weights serve
any vocabulary.

``build_class_head`` makes the per-query class embedding head (MODEL.DATASEG.CLASS_HEAD).

With ``MODEL.DATASEG.DATASET_SPECIFIC.PROMPT_TOKENS`` > 0 (paper Table 5) each owner dataset
has learnable prompt tokens P (tokens x D, zero at init) and its text embeddings become
normalize(t + softmax(t P^T) P): a per-dataset, class-dependent shift in the text space (the
text encoder is frozen and cached, so prompts act on its output, not on its input tokens).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .dataset_specific import DatasetIndex

CLASS_HEADS = ("linear_relu", "linear_relu_linear")


def build_class_head(kind: str, hidden_dim: int, text_dim: int) -> nn.Sequential:
    """Query features (..., hidden_dim) -> class embeddings (..., text_dim).

    "linear_relu" (paper): Linear(hidden, text) + ReLU; its outputs are non-negative, so after
    normalisation they can only point into the positive orthant of the text space.
    "linear_relu_linear": Linear(hidden, hidden) + ReLU + Linear(hidden, text).
    "linear" (set by MODEL.DATASEG.CLASSIFIER.NAME "linear", not by CLASS_HEAD): Mask2Former's
    class_embed, one Linear(hidden, K + 1) giving the logits themselves.
    """
    if kind == "linear_relu":
        return nn.Sequential(nn.Linear(hidden_dim, text_dim), nn.ReLU())
    if kind == "linear_relu_linear":
        return nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                             nn.Linear(hidden_dim, text_dim))
    if kind == "linear":  # CLASSIFIER.NAME "linear": Mask2Former's class_embed, text_dim = K + 1
        return nn.Linear(hidden_dim, text_dim)
    raise ValueError(f"MODEL.DATASEG.CLASS_HEAD: {kind!r} is not one of {list(CLASS_HEADS)}")


class TextEmbeddingClassifier(nn.Module):
    """(B, N, D) class embeddings x (K, D) text embeddings -> (B, N, K+1) logits."""

    @configurable
    def __init__(self, *, text_dim: int, temperature: float = 0.07,
                 normalize_class_embed: bool = True, prompt_tokens: int = 0,
                 dataset_index: Optional[DatasetIndex] = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"CLASSIFIER.TEMPERATURE must be > 0, got {temperature}")
        self.text_dim = text_dim
        self.temperature = temperature
        self.normalize_class_embed = normalize_class_embed
        self.background = nn.Parameter(torch.randn(text_dim) / text_dim ** 0.5)
        self.dataset_index = None
        if prompt_tokens > 0:
            if dataset_index is None:
                raise ValueError("prompt tokens need a dataset_index (DatasetIndex)")
            self.dataset_index = dataset_index
            self.prompts = nn.ParameterList(nn.Parameter(torch.zeros(prompt_tokens, text_dim))
                                            for _ in range(len(dataset_index)))

    @classmethod
    def from_config(cls, cfg, text_dim: int):
        c = cfg.MODEL.DATASEG.CLASSIFIER
        tokens = int(cfg.MODEL.DATASEG.DATASET_SPECIFIC.PROMPT_TOKENS)
        return {"text_dim": text_dim, "temperature": c.TEMPERATURE,
                "normalize_class_embed": c.NORMALIZE_CLASS_EMBED, "prompt_tokens": tokens,
                "dataset_index": DatasetIndex.from_cfg(cfg) if tokens > 0 else None}

    def prompted(self, text_embed: torch.Tensor, dataset: Optional[str]) -> torch.Tensor:
        """(K, D) text embeddings with dataset ``dataset``'s prompt tokens applied (unchanged
        without prompt tokens)."""
        if self.dataset_index is None:
            return text_embed
        p = self.prompts[self.dataset_index(dataset)].to(text_embed.dtype)
        return F.normalize(text_embed + torch.softmax(text_embed @ p.T, dim=-1) @ p, dim=-1)

    def forward(self, class_embed: torch.Tensor, text_embed: torch.Tensor,
                dataset: Optional[str] = None) -> torch.Tensor:
        """class_embed (B, N, D), text_embed (K, D) of dataset ``dataset`` (its name matters
        only with dataset-specific prompts) -> logits (B, N, K+1), background last."""
        if text_embed.dim() != 2 or text_embed.shape[1] != self.text_dim:
            raise ValueError(f"text embeddings must be (K, {self.text_dim}), got "
                             f"{tuple(text_embed.shape)}")
        if self.normalize_class_embed:
            class_embed = F.normalize(class_embed, dim=-1)
        text_embed = self.prompted(text_embed, dataset)
        weights = torch.cat([text_embed.to(class_embed.dtype),
                             F.normalize(self.background, dim=0)[None].to(class_embed.dtype)])
        return class_embed @ weights.T / self.temperature
