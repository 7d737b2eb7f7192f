"""Small HF transformers Mask2Former models and the DaTaSeg configs that match them, and a
Mask2Former model-zoo key list written from Mask2Former's module structure (not from the
converter under test)."""
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from detectron2.config import get_cfg

from dataseg.config import add_dataseg_config

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = str(REPO / "configs" / "Base-DaTaSeg.yaml")

# small sizes: a ResNet-50-shaped backbone (3, 4, 6, 3 bottlenecks) with narrow widths
SMALL = {"stem": 16, "widths": (32, 64, 128, 256), "hidden": 32, "ffn": 64, "enc_ffn": 64,
         "enc_layers": 2, "dec_layers": 3, "heads": 2, "queries": 6, "classes": 5,
         "pre_norm": False}


def hf_model(seed: int = 0, split_cross_attn: bool = False, **sizes):
    """A randomly initialised ``Mask2FormerForUniversalSegmentation`` (eval mode) with a
    ResNet backbone; BatchNorm statistics and affine terms are randomised too (HF initialises
    them to the identity) so that the backbone comparison means something."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

    s = {**SMALL, **sizes}
    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=s["stem"], hidden_sizes=list(s["widths"]),
                            depths=[3, 4, 6, 3], layer_type="bottleneck",
                            downsample_in_bottleneck=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, use_timm_backbone=False, feature_size=s["hidden"],
        mask_feature_size=s["hidden"], hidden_dim=s["hidden"], dim_feedforward=s["ffn"],
        encoder_feedforward_dim=s["enc_ffn"], encoder_layers=s["enc_layers"],
        decoder_layers=s["dec_layers"] + 1, num_attention_heads=s["heads"],
        num_queries=s["queries"], num_labels=s["classes"], pre_norm=s["pre_norm"])
    model = Mask2FormerForUniversalSegmentation(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))
        # the pixel decoder's sampling offsets start at 0 in HF's init: make them matter
        for name, p in model.named_parameters():
            if "sampling_offsets.weight" in name or "attention_weights.weight" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def dataseg_cfg(linear: bool = True, **sizes):
    """The DaTaSeg config whose model has the shapes of ``hf_model(**sizes)``."""
    s = {**SMALL, **sizes}
    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS = 50, s["stem"], s["widths"][0]
    r.WIDTH_PER_GROUP, r.NUM_GROUPS = s["widths"][0] // 4, 1
    r.NORM, r.STRIDE_IN_1X1 = "FrozenBN", False
    d = cfg.MODEL.DATASEG
    d.HIDDEN_DIM = d.MASK_DIM = d.PIXEL_DECODER.CONVS_DIM = s["hidden"]
    d.NHEADS = d.PIXEL_DECODER.ENC_HEADS = s["heads"]
    d.DIM_FEEDFORWARD, d.PIXEL_DECODER.ENC_DIM_FEEDFORWARD = s["ffn"], s["enc_ffn"]
    d.DEC_LAYERS, d.PIXEL_DECODER.ENC_LAYERS = s["dec_layers"], s["enc_layers"]
    d.NUM_OBJECT_QUERIES = s["queries"]
    d.PRE_NORM = s["pre_norm"]
    d.PIXEL_DECODER.DEFORM_ATTN_IMPL = "pytorch"
    d.CLASSIFIER.TEXT_DIM = 8
    if linear:
        d.CLASSIFIER.NAME, d.CLASSIFIER.NUM_CLASSES = "linear", s["classes"]
        d.TEST.MERGE = False
    return cfg


def m2f_r50_coco_panoptic_keys(num_classes: int = 133) -> Dict[str, Tuple[int, ...]]:
    """Keys and shapes of Mask2Former's R50 COCO panoptic model-zoo file, from its module
    structure: Detectron2's R50 (FrozenBN, stride in the 3x3), MSDeformAttnPixelDecoder
    (conv_dim = mask_dim = 256, 6 encoder layers, 8 heads, 4 points, 3 levels, FFN 1024, one
    FPN level: adapter_1 / layer_1 on res2), MultiScaleMaskedTransformerDecoder (hidden 256,
    100 queries, DEC_LAYERS 10 = 9 layers, FFN 2048, class_embed 133 + 1), and the criterion's
    ``empty_weight`` buffer."""
    keys: Dict[str, Tuple[int, ...]] = {}

    def bn(prefix, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.norm.{n}"] = (c,)

    keys["backbone.stem.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.stem.conv1", 64)
    cin = 64
    for stage, (blocks, out) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048)), 2):
        mid = out // 4
        for b in range(blocks):
            p = f"backbone.res{stage}.{b}"
            if b == 0:
                keys[f"{p}.shortcut.weight"] = (out, cin, 1, 1)
                bn(f"{p}.shortcut", out)
            keys[f"{p}.conv1.weight"] = (mid, cin if b == 0 else out, 1, 1)
            bn(f"{p}.conv1", mid)
            keys[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            bn(f"{p}.conv2", mid)
            keys[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            bn(f"{p}.conv3", out)
        cin = out
    pd = "sem_seg_head.pixel_decoder"
    for i, c in enumerate((2048, 1024, 512)):  # res5, res4, res3
        keys[f"{pd}.input_proj.{i}.0.weight"] = (256, c, 1, 1)
        keys[f"{pd}.input_proj.{i}.0.bias"] = (256,)
        keys[f"{pd}.input_proj.{i}.1.weight"] = (256,)
        keys[f"{pd}.input_proj.{i}.1.bias"] = (256,)
    keys[f"{pd}.transformer.level_embed"] = (3, 256)
    for i in range(6):
        p = f"{pd}.transformer.encoder.layers.{i}"
        for name, shape in (("self_attn.sampling_offsets", (8 * 3 * 4 * 2, 256)),
                            ("self_attn.attention_weights", (8 * 3 * 4, 256)),
                            ("self_attn.value_proj", (256, 256)),
                            ("self_attn.output_proj", (256, 256)),
                            ("linear1", (1024, 256)), ("linear2", (256, 1024))):
            keys[f"{p}.{name}.weight"] = shape
            keys[f"{p}.{name}.bias"] = (shape[0],)
        for n in ("norm1", "norm2"):
            keys[f"{p}.{n}.weight"] = keys[f"{p}.{n}.bias"] = (256,)
    keys[f"{pd}.mask_features.weight"] = (256, 256, 1, 1)
    keys[f"{pd}.mask_features.bias"] = (256,)
    keys[f"{pd}.adapter_1.weight"] = (256, 256, 1, 1)
    keys[f"{pd}.adapter_1.norm.weight"] = keys[f"{pd}.adapter_1.norm.bias"] = (256,)
    keys[f"{pd}.layer_1.weight"] = (256, 256, 3, 3)
    keys[f"{pd}.layer_1.norm.weight"] = keys[f"{pd}.layer_1.norm.bias"] = (256,)
    pr = "sem_seg_head.predictor"
    for i in range(9):
        for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
            p = f"{pr}.transformer_{kind}_attention_layers.{i}"
            keys[f"{p}.{attn}.in_proj_weight"] = (768, 256)
            keys[f"{p}.{attn}.in_proj_bias"] = (768,)
            keys[f"{p}.{attn}.out_proj.weight"] = (256, 256)
            keys[f"{p}.{attn}.out_proj.bias"] = (256,)
            keys[f"{p}.norm.weight"] = keys[f"{p}.norm.bias"] = (256,)
        p = f"{pr}.transformer_ffn_layers.{i}"
        keys[f"{p}.linear1.weight"], keys[f"{p}.linear1.bias"] = (2048, 256), (2048,)
        keys[f"{p}.linear2.weight"], keys[f"{p}.linear2.bias"] = (256, 2048), (256,)
        keys[f"{p}.norm.weight"] = keys[f"{p}.norm.bias"] = (256,)
    keys[f"{pr}.decoder_norm.weight"] = keys[f"{pr}.decoder_norm.bias"] = (256,)
    keys[f"{pr}.query_feat.weight"] = keys[f"{pr}.query_embed.weight"] = (100, 256)
    keys[f"{pr}.level_embed.weight"] = (3, 256)
    keys[f"{pr}.class_embed.weight"] = (num_classes + 1, 256)
    keys[f"{pr}.class_embed.bias"] = (num_classes + 1,)
    for j in range(3):
        keys[f"{pr}.mask_embed.layers.{j}.weight"] = (256, 256)
        keys[f"{pr}.mask_embed.layers.{j}.bias"] = (256,)
    keys["criterion.empty_weight"] = (num_classes + 1,)
    return keys


def synthesized_m2f_checkpoint(seed: int = 0, num_classes: int = 133) -> dict:
    """{"model": {key: random float32 numpy array}, "__author__": ...} in the model zoo's
    layout (BatchNorm variances positive)."""
    rng = np.random.default_rng(seed)
    model = {}
    for key, shape in m2f_r50_coco_panoptic_keys(num_classes).items():
        a = rng.standard_normal(shape).astype(np.float32) * 0.02
        if key.endswith("running_var"):
            a = 1.0 + np.abs(a)
        model[key] = a
    return {"model": model, "__author__": "synthesized for DaTaSeg's tests"}


def pairs(a, b):
    """zip of two sequences that must have the same length (zip(strict=True) needs 3.10)."""
    a, b = list(a), list(b)
    assert len(a) == len(b), (len(a), len(b))
    return list(zip(a, b))
