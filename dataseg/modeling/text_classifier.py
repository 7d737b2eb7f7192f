"""Text-embedding classifier: class logits are dot products of a query's class embedding with
frozen L2-normalised text embeddings of the current dataset's categories, plus one shared
learnable background embedding (the last logit).

logit_k = <normalize(e), t_k> / temperature, with ``e`` the class embedding (normalised when
``normalize_class_embed``) and ``t_k`` the text embedding (the background embedding is
normalised too). The text embeddings are an input, not a parameter, so the same weights serve
any vocabulary.

``build_class_head`` makes the per-query class embedding head (MODEL.DATASEG.CLASS_HEAD).
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

CLASS_HEADS = ("linear_relu", "linear_relu_linear")


def build_class_head(kind: str, hidden_dim: int, text_dim: int) -> nn.Sequential:
    """Query features (..., hidden_dim) -> class embeddings (..., text_dim).

    "linear_relu" (paper): Linear(hidden, text) + ReLU; its outputs are non-negative, so after
    normalisation they can only point into the positive orthant of the text space.
    "linear_relu_linear": Linear(hidden, hidden) + ReLU + Linear(hidden, text).
    """
    if kind == "linear_relu":
        return nn.Sequential(nn.Linear(hidden_dim, text_dim), nn.ReLU())
    if kind == "linear_relu_linear":
        return nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                             nn.Linear(hidden_dim, text_dim))
    raise ValueError(f"MODEL.DATASEG.CLASS_HEAD: {kind!r} is not one of {list(CLASS_HEADS)}")


class TextEmbeddingClassifier(nn.Module):
    """(B, N, D) class embeddings x (K, D) text embeddings -> (B, N, K+1) logits."""

    @configurable
    def __init__(self, *, text_dim: int, temperature: float = 0.07,
                 normalize_class_embed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"CLASSIFIER.TEMPERATURE must be > 0, got {temperature}")
        self.text_dim = text_dim
        self.temperature = temperature
        self.normalize_class_embed = normalize_class_embed
        self.background = nn.Parameter(torch.randn(text_dim) / text_dim ** 0.5)

    @classmethod
    def from_config(cls, cfg, text_dim: int):
        c = cfg.MODEL.DATASEG.CLASSIFIER
        return {"text_dim": text_dim, "temperature": c.TEMPERATURE,
                "normalize_class_embed": c.NORMALIZE_CLASS_EMBED}

    def forward(self, class_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        if text_embed.dim() != 2 or text_embed.shape[1] != self.text_dim:
            raise ValueError(f"text embeddings must be (K, {self.text_dim}), got "
                             f"{tuple(text_embed.shape)}")
        if self.normalize_class_embed:
            class_embed = F.normalize(class_embed, dim=-1)
        weights = torch.cat([text_embed.to(class_embed.dtype),
                             F.normalize(self.background, dim=0)[None].to(class_embed.dtype)])
        return class_embed @ weights.T / self.temperature
