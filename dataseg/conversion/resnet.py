"""ResNet weights in other codebases' layouts -> Detectron2's ResNet (``backbone.*`` keys).

- torchvision's ``resnet50`` state dict and timm's ResNet-50 (the same names: ``conv1``,
  ``bn1``, ``layer{1-4}.{b}.conv{1-3}``/``bn{1-3}``, ``downsample.{0,1}``, ``fc``);
- HF transformers' ``ResNetBackbone`` inside a Mask2Former checkpoint
  (``embedder.embedder.{convolution,normalization}``,
  ``encoder.stages.{s}.layers.{b}.{shortcut,layer.{j}}.{convolution,normalization}``).

Detectron2's names: ``stem.conv1`` (+ ``.norm``), ``res{2-5}.{b}.conv{1-3}`` (+ ``.norm``),
``res{2-5}.0.shortcut`` (+ ``.norm``). BatchNorm's ``num_batches_tracked`` has no counterpart
(FrozenBN) and the classifier ``fc`` none either: both are reported as unused.
All three layouts put the stride of a bottleneck in its 3x3 conv, as Detectron2 does with
``MODEL.RESNETS.STRIDE_IN_1X1: False`` (``check_stride_in_3x3`` verifies the model).
"""
import re
from typing import Dict, List, Optional, Tuple

_BN = r"(weight|bias|running_mean|running_var)"

# (pattern, replacement) applied to the key without its prefix; first match wins
TORCHVISION_RULES: List[Tuple[str, str]] = [
    (r"^conv1\.weight$", r"stem.conv1.weight"),
    (rf"^bn1\.{_BN}$", r"stem.conv1.norm.\1"),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.weight$", "res{L}.\\2.conv\\3.weight"),
    (rf"^layer(\d)\.(\d+)\.bn(\d)\.{_BN}$", "res{L}.\\2.conv\\3.norm.\\4"),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.weight$", "res{L}.\\2.shortcut.weight"),
    (rf"^layer(\d)\.(\d+)\.downsample\.1\.{_BN}$", "res{L}.\\2.shortcut.norm.\\3"),
]

HF_RESNET_RULES: List[Tuple[str, str]] = [
    (r"^embedder\.embedder\.convolution\.weight$", r"stem.conv1.weight"),
    (rf"^embedder\.embedder\.normalization\.{_BN}$", r"stem.conv1.norm.\1"),
    (r"^encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.weight$",
     "res{S}.\\2.shortcut.weight"),
    (rf"^encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}$",
     "res{S}.\\2.shortcut.norm.\\3"),
    (r"^encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight$",
     "res{S}.\\2.conv{J}.weight"),
    (rf"^encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.{_BN}$",
     "res{S}.\\2.conv{J}.norm.\\4"),
]


def _apply(rules, key: str) -> Optional[str]:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            out = m.expand(repl)
            if "{L}" in out:  # torchvision layer1..4 = res2..5
                out = out.replace("{L}", str(int(m.group(1)) + 1))
            if "{S}" in out:  # HF stages 0..3 = res2..5
                out = out.replace("{S}", str(int(m.group(1)) + 2))
            if "{J}" in out:  # HF layer.0..2 = conv1..3
                out = out.replace("{J}", str(int(m.group(3)) + 1))
            return out
    return None


def is_torchvision_resnet(keys) -> bool:
    """torchvision/timm ResNet state dict (no prefix)."""
    keys = set(keys)
    return "conv1.weight" in keys and "bn1.weight" in keys and any(
        k.startswith("layer1.0.conv1.") for k in keys)


def convert_torchvision_resnet(state: Dict, prefix: str = "backbone."):
    """torchvision/timm ResNet state dict -> ({backbone.* Detectron2 key: value},
    {source key: target key}, [unused source keys])."""
    return _convert(state, TORCHVISION_RULES, prefix)


def convert_hf_resnet(state: Dict, prefix: str = "backbone."):
    """HF ``ResNetBackbone`` keys (without their prefix) -> Detectron2 ResNet keys."""
    return _convert(state, HF_RESNET_RULES, prefix)


def _convert(state, rules, prefix):
    out, mapping, unused = {}, {}, []
    for key, value in state.items():
        target = _apply(rules, key)
        if target is None:
            unused.append(key)
            continue
        out[prefix + target] = value
        mapping[key] = prefix + target
    return out, mapping, unused


def check_stride_in_3x3(model, filename: str) -> None:
    """These layouts put the stride in the 3x3 conv; a model built with STRIDE_IN_1X1: True
    would load the weights without a shape error but compute something else."""
    backbone = getattr(model, "backbone", None)
    res3 = getattr(backbone, "res3", None)
    if res3 is None:
        return
    first = res3[0]
    if hasattr(first, "conv1") and tuple(first.conv1.stride) != (1, 1):
        raise ValueError(f"{filename}: these ResNet weights put the stride in each bottleneck's "
                         "3x3 conv but the model has it in the 1x1: set "
                         "MODEL.RESNETS.STRIDE_IN_1X1: False")
