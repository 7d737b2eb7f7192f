"""Fixed-vocabulary linear classifier (``MODEL.DATASEG.CLASSIFIER.NAME: "linear"``).

Mask2Former classifies each query with one linear layer, ``class_embed``: hidden -> K + 1 logits
(the background last), trained for one dataset's K classes. DaTaSeg's text classifier replaces
that layer; this module keeps it as an alternative so that a converted Mask2Former checkpoint
runs end to end (predictor, demo, evaluation, export) with the checkpoint's own classes.

The linear layer itself is the decoder's class head (``transformer_decoder.class_embed``, a
``nn.Linear(hidden, K + 1)``, the key Mask2Former's ``class_embed`` converts to), so the decoder
hands out logits already; this classifier only checks that the vocabulary the model is run with
has the K classes the layer was trained for, and passes the logits through. The text
embeddings are ignored: only their count matters.
"""
from typing import Optional

import torch
from detectron2.config import configurable
from torch import nn

CLASSIFIERS = ("text", "linear")


def check_classifier_name(name: str) -> str:
    if name not in CLASSIFIERS:
        raise ValueError(f"MODEL.DATASEG.CLASSIFIER.NAME: {name!r} is not one of "
                         f"{list(CLASSIFIERS)}")
    return name


class FixedVocabularyClassifier(nn.Module):
    """(B, N, K+1) logits of the decoder's linear class head -> the same logits, after checking
    that the vocabulary has K classes."""

    @configurable
    def __init__(self, *, num_classes: int, text_dim: int):
        super().__init__()
        if num_classes <= 0:
            raise ValueError("MODEL.DATASEG.CLASSIFIER.NUM_CLASSES must be > 0 with the "
                             f"\"linear\" classifier, got {num_classes}")
        self.num_classes = num_classes
        self.text_dim = text_dim  # the vocabulary bank's embedding width (unused here)

    @classmethod
    def from_config(cls, cfg, text_dim: int):
        return {"num_classes": int(cfg.MODEL.DATASEG.CLASSIFIER.NUM_CLASSES),
                "text_dim": text_dim}

    def forward(self, class_logits: torch.Tensor, text_embed: torch.Tensor,
                dataset: Optional[str] = None) -> torch.Tensor:
        """class_logits (B, N, K+1) from the decoder; text_embed (K', D): only K' is read."""
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"fixed-vocabulary classifier: {class_logits.shape[-1]} logits per "
                             f"query, expected NUM_CLASSES + 1 = {self.num_classes + 1}")
        if text_embed.shape[0] != self.num_classes:
            raise ValueError(
                f"vocabulary '{dataset}' has {text_embed.shape[0]} classes but the "
                f"fixed-vocabulary linear classifier was built for {self.num_classes} "
                "(MODEL.DATASEG.CLASSIFIER.NUM_CLASSES): run it with the checkpoint's own "
                "classes, in its order")
        return class_logits
