"""Backbones DaTaSeg adds to Detectron2's BACKBONE_REGISTRY (registered on import)."""
from .efficientnet_lite import EfficientNetLite0Backbone, build_efficientnet_lite0_backbone
from .vitdet import ViTDetBackbone, build_vitdet_backbone

__all__ = ["EfficientNetLite0Backbone", "ViTDetBackbone", "build_efficientnet_lite0_backbone",
           "build_vitdet_backbone"]
