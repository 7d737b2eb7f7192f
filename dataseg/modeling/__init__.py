"""DaTaSeg model parts. Importing this package registers ``DaTaSeg`` in Detectron2's
``META_ARCH_REGISTRY`` and the backbones in ``backbone/`` in ``BACKBONE_REGISTRY``."""
from . import backbone  # noqa: F401,E402  (registers the EfficientNet-Lite0 and ViTDet backbones)
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .merge import classes_to_merge, merge_for_task, merge_predictions
from .meta_arch import DaTaSeg
from .pixel_decoder import MSDeformAttnPixelDecoder
from .text_classifier import TextEmbeddingClassifier
from .transformer_decoder import MaskedAttentionDecoder
from .vocabulary_bank import VocabularyBank

__all__ = ["DaTaSeg", "HungarianMatcher", "MSDeformAttnPixelDecoder", "MaskedAttentionDecoder",
           "SetCriterion", "TextEmbeddingClassifier", "VocabularyBank", "classes_to_merge",
           "merge_for_task", "merge_predictions"]
