"""Published weights in other codebases' layouts -> DaTaSeg checkpoints (issue 23).

``convert_state_dict(state, filename, model=None)`` recognises the layout of a state dict,
renames (and where needed concatenates) its tensors into DaTaSeg's module names and returns
``(state, ConversionReport)``:

==================  ==========================================================================
layout              recognised by
==================  ==========================================================================
``mask2former``     ``sem_seg_head.pixel_decoder.*`` / ``sem_seg_head.predictor.*`` (Mask2Former's
                    Detectron2 pickles; ResNet ``backbone.*``)
``hf_mask2former``  ``model.pixel_level_module.*`` / ``model.transformer_module.*`` (HF
                    transformers, ``.safetensors`` or ``.bin``; ResNet backbone)
``resnet``          ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight`` (torchvision's
                    ``resnet50`` state dict, timm's ResNet-50): the backbone only
==================  ==========================================================================

Anything else (DaTaSeg's own checkpoints, Detectron2's ImageNet ``.pkl``) is left alone
(``detect_layout`` returns None). With a ``model`` every converted tensor is checked against
the model built from the config: a key with no place in it or another shape is a one-line
``ConversionShapeError`` naming both keys and both shapes. Mask2Former's ``class_embed`` loads
into the fixed-vocabulary linear head (``MODEL.DATASEG.CLASSIFIER.NAME: "linear"``) and is
dropped, and reported, for a model with the text classifier.

``MODEL.WEIGHTS``: ``AtomicCheckpointer.load`` (``dataseg/engine/checkpoint.py``) asks
``detect_layout`` of every file it reads and loads a recognised one through
``convert_state_dict``; every weights file (``.pth``, ``.pkl``, ``.safetensors``) is read by
``dataseg.engine.checkpoint.read_weights``, the one reader; ``tools/convert_checkpoint.py``
writes the converted file.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .mask2former import HF_PREFIXES, M2F_PREFIXES, convert_hf_mask2former, convert_mask2former
from .resnet import check_stride_in_3x3, convert_torchvision_resnet, is_torchvision_resnet

__all__ = ["ConversionError", "ConversionShapeError", "ConversionReport", "LAYOUTS",
           "convert_state_dict", "detect_layout"]

logger = logging.getLogger(__name__)

LAYOUTS = {"mask2former": "Mask2Former (Detectron2 layout)",
           "hf_mask2former": "HF transformers Mask2Former",
           "resnet": "torchvision/timm ResNet"}
MASK_BRANCH = ("backbone.", "pixel_decoder.", "transformer_decoder.")


class ConversionError(ValueError):
    """A file that is not a checkpoint of a layout this module converts (one line)."""


class ConversionShapeError(ConversionError):
    """A converted tensor that does not fit the model built from the config (one line)."""


@dataclass
class ConversionReport:
    """What a conversion did: ``converted`` {source key: DaTaSeg key}, ``unused`` source keys
    with no DaTaSeg counterpart, ``dropped`` {DaTaSeg key: why} (converted but not loaded),
    ``missing`` model keys the checkpoint does not fill (only with a model)."""
    layout: str
    filename: str
    converted: Dict[str, str] = field(default_factory=dict)
    unused: List[str] = field(default_factory=list)
    dropped: Dict[str, str] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)

    @property
    def missing_mask_branch(self) -> List[str]:
        """Missing keys of the backbone, pixel decoder and decoder, except the class head
        (which the text classifier trains from scratch)."""
        return [k for k in self.missing if k.startswith(MASK_BRANCH)
                and not k.startswith("transformer_decoder.class_embed.")]

    def summary(self) -> str:
        lines = [f"{self.filename}: {LAYOUTS[self.layout]} checkpoint, "
                 f"{len(self.converted)} tensors converted, {len(self.unused)} unused, "
                 f"{len(self.dropped)} dropped, {len(self.missing)} model keys missing"]
        counters = [k for k in self.unused if k.endswith("num_batches_tracked")]
        others = [k for k in self.unused if not k.endswith("num_batches_tracked")]
        if others:
            lines.append("  unused: " + _short(others))
        if counters:
            lines.append(f"  unused: {len(counters)} BatchNorm num_batches_tracked counters "
                         "(FrozenBN has none)")
        for key, why in self.dropped.items():
            lines.append(f"  dropped {key}: {why}")
        if self.missing:
            groups: Dict[str, int] = {}
            for k in self.missing:
                top = ".".join(k.split(".")[:2])
                groups[top] = groups.get(top, 0) + 1
            lines.append("  missing (trained from scratch): "
                         + ", ".join(f"{g}.* ({n})" for g, n in groups.items()))
        return "\n".join(lines)


def _short(keys, n=8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _guess(state) -> str:
    """What an unrecognised state dict looks like, for the error message."""
    keys = list(state)
    if any(k.startswith(("blocks.", "patch_embed.")) or k in ("cls_token", "pos_embed")
           for k in keys):
        return "; a ViT?"
    if any(k.startswith(("backbone.", "pixel_decoder.", "transformer_decoder.")) for k in keys):
        return "; a DaTaSeg/Detectron2 checkpoint, which needs no conversion?"
    return ""


def detect_layout(keys) -> Optional[str]:
    """"mask2former", "hf_mask2former", "resnet", or None (DaTaSeg's own or unknown)."""
    keys = list(keys)
    if any(k.startswith(M2F_PREFIXES) for k in keys):
        return "mask2former"
    if any(k.startswith(HF_PREFIXES) for k in keys):
        return "hf_mask2former"
    if any(k.startswith(tuple(p[len("model."):] for p in HF_PREFIXES)) for k in keys):
        return "hf_mask2former"  # a bare Mask2FormerModel's state dict (no "model." prefix)
    if is_torchvision_resnet(keys):
        return "resnet"
    return None


def _backbone_problem(state: Dict, layout: str) -> Optional[str]:
    """A one-line reason when the checkpoint's backbone is not a ResNet DaTaSeg can load."""
    if layout == "mask2former":
        bb = [k for k in state if k.startswith("backbone.")]
        if bb and not any(k.startswith("backbone.stem.") for k in bb):
            return f"its backbone is not Detectron2's ResNet (e.g. {bb[0]}; Swin?)"
    if layout == "hf_mask2former":
        bb = [k for k in state if k.startswith("model.pixel_level_module.encoder.")]
        if bb and not any(".embedder.embedder.convolution." in k for k in bb):
            return f"its backbone is not HF's ResNet (e.g. {bb[0]}; Swin?)"
    return None


def _to_tensor(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value
    raise ConversionError(f"value of type {type(value).__name__} is not an array")


def convert_state_dict(state: Dict, filename: str = "<state dict>", model=None,
                       layout: Optional[str] = None):
    """{source key: array} of a recognised layout -> ({DaTaSeg key: tensor}, ConversionReport).

    ``model``: the DaTaSeg model the weights are for; converted keys are then checked against
    its state dict (shapes, presence), keys it lacks are dropped or are an error, and the
    report lists its keys left unfilled.
    """
    found = detect_layout(state.keys())
    if layout is not None and found != layout:
        actual = f"it is a {LAYOUTS[found]} one" if found else "its keys are not"
        raise ConversionError(f"{filename}: given as a {LAYOUTS[layout]} checkpoint but {actual} "
                              f"({_short(sorted(state), 4)}{_guess(state)})")
    layout = layout or found
    if layout is None:
        raise ConversionError(f"{filename}: not a Mask2Former checkpoint (neither Mask2Former's "
                              "sem_seg_head.* nor HF's model.pixel_level_module.* keys) nor a "
                              "torchvision/timm ResNet; its keys: "
                              f"{_short(sorted(state), 4)}{_guess(state)}")
    problem = _backbone_problem(state, layout)
    if problem:
        raise ConversionError(f"{filename}: a {LAYOUTS[layout]} checkpoint that DaTaSeg cannot "
                              f"load: {problem}; DaTaSeg's backbones here are ResNets")
    try:
        state = {k: _to_tensor(v) for k, v in state.items()}
    except ConversionError as e:
        raise ConversionError(f"{filename}: {e}") from None
    if layout == "mask2former":
        out, mapping, unused = convert_mask2former(state, torch.cat)
    elif layout == "hf_mask2former":
        if not any(k.startswith(HF_PREFIXES) for k in state):
            state = {(k if k.startswith("class_predictor.") else "model." + k): v
                     for k, v in state.items()}
        try:
            out, mapping, unused = convert_hf_mask2former(state, torch.cat)
        except KeyError as e:
            raise ConversionError(f"{filename}: {e.args[0]}") from None
    else:
        out, mapping, unused = convert_torchvision_resnet(state)
    report = ConversionReport(layout, filename, mapping, unused)
    if model is not None:
        out = _fit_to_model(out, report, model)
    logger.info("%s", report.summary())
    return out, report


def _fit_to_model(out: Dict, report: ConversionReport, model) -> Dict:
    model_state = model.state_dict()
    source = {v: k for k, v in report.converted.items()}
    fitted = {}
    for key, value in out.items():
        src = source.get(key, key)
        if key not in model_state:
            if key.startswith("transformer_decoder.class_embed."):
                report.dropped[key] = (f"Mask2Former's linear classifier ({value.shape[0]} "
                                       "logits); the model's text classifier is trained instead "
                                       "(MODEL.DATASEG.CLASSIFIER.NAME: \"linear\" keeps it)")
                continue
            raise ConversionShapeError(
                f"{report.filename}: checkpoint key {src} (-> {key}) has no place in the model "
                "built from the config (does the config have fewer layers, e.g. "
                "MODEL.DATASEG.DEC_LAYERS, PIXEL_DECODER.ENC_LAYERS, RESNETS.DEPTH?)")
        want = tuple(model_state[key].shape)
        if tuple(value.shape) != want:
            raise ConversionShapeError(
                f"{report.filename}: checkpoint key {src} (-> {key}) has shape "
                f"{tuple(value.shape)} but the model built from the config has {want} "
                "(hidden size, queries, classes or backbone widths differ)")
        fitted[key] = value
    report.missing = [k for k in model_state if k not in fitted]
    if report.layout in ("resnet", "hf_mask2former", "mask2former"):
        try:
            check_stride_in_3x3(model, report.filename)
        except ValueError as e:
            raise ConversionShapeError(str(e)) from None
    return fitted
