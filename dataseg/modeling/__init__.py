"""DaTaSeg model parts. Importing this package registers ``DaTaSeg`` in Detectron2's
``META_ARCH_REGISTRY`` (and the backbones in ``backbone/`` when present)."""
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .merge import classes_to_merge, merge_for_task, merge_predictions
from .meta_arch import DaTaSeg
from .pixel_decoder import MSDeformAttnPixelDecoder
from .text_classifier import TextEmbeddingClassifier
from .transformer_decoder import MaskedAttentionDecoder
from .vocabulary_bank import VocabularyBank

try:  # the backbone package is written separately; register it when it is there
    from . import backbone  # noqa: F401
except ImportError as e:  # pragma: no cover - only while the package is absent
    if "backbone" not in str(e):
        raise

__all__ = ["DaTaSeg", "HungarianMatcher", "MSDeformAttnPixelDecoder", "MaskedAttentionDecoder",
           "SetCriterion", "TextEmbeddingClassifier", "VocabularyBank", "classes_to_merge",
           "merge_for_task", "merge_predictions"]
