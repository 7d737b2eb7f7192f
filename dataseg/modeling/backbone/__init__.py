"""Backbones DaTaSeg adds to Detectron2's BACKBONE_REGISTRY (registered on import)."""
from .efficientnet_lite import EfficientNetLite0Backbone, build_efficientnet_lite0_backbone

__all__ = ["EfficientNetLite0Backbone", "build_efficientnet_lite0_backbone"]
