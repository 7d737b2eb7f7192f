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
    randomise_batchnorm(model, g)
    with torch.no_grad():
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


def m2f_r50_coco_panoptic_keys(num_classes: int = 133, stem: int = 64,
                               widths=(256, 512, 1024, 2048), hidden: int = 256,
                               enc_layers: int = 6, heads: int = 8, enc_ffn: int = 1024,
                               dec_layers: int = 9, ffn: int = 2048,
                               queries: int = 100) -> Dict[str, Tuple[int, ...]]:
    """Keys and shapes of Mask2Former's R50 COCO panoptic model-zoo file, from its module
    structure: Detectron2's R50 (FrozenBN, stride in the 3x3), MSDeformAttnPixelDecoder
    (conv_dim = mask_dim = 256, 6 encoder layers, 8 heads, 4 points, 3 levels, FFN 1024, one
    FPN level: adapter_1 / layer_1 on res2), MultiScaleMaskedTransformerDecoder (hidden 256,
    100 queries, DEC_LAYERS 10 = 9 layers, FFN 2048, class_embed 133 + 1), and the criterion's
    ``empty_weight`` buffer. The arguments give the same structure at other sizes (the
    defaults are the model zoo file's)."""
    keys: Dict[str, Tuple[int, ...]] = {}

    def bn(prefix, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.norm.{n}"] = (c,)

    keys["backbone.stem.conv1.weight"] = (stem, 3, 7, 7)
    bn("backbone.stem.conv1", stem)
    cin = stem
    for stage, (blocks, out) in enumerate(zip((3, 4, 6, 3), widths), 2):
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
    h = hidden  # conv_dim = mask_dim = hidden_dim, as in the model zoo's configs
    for i, c in enumerate(reversed(widths[1:])):  # res5, res4, res3
        keys[f"{pd}.input_proj.{i}.0.weight"] = (h, c, 1, 1)
        keys[f"{pd}.input_proj.{i}.0.bias"] = (h,)
        keys[f"{pd}.input_proj.{i}.1.weight"] = (h,)
        keys[f"{pd}.input_proj.{i}.1.bias"] = (h,)
    keys[f"{pd}.transformer.level_embed"] = (3, h)
    for i in range(enc_layers):
        p = f"{pd}.transformer.encoder.layers.{i}"
        for name, shape in (("self_attn.sampling_offsets", (heads * 3 * 4 * 2, h)),
                            ("self_attn.attention_weights", (heads * 3 * 4, h)),
                            ("self_attn.value_proj", (h, h)),
                            ("self_attn.output_proj", (h, h)),
                            ("linear1", (enc_ffn, h)), ("linear2", (h, enc_ffn))):
            keys[f"{p}.{name}.weight"] = shape
            keys[f"{p}.{name}.bias"] = (shape[0],)
        for n in ("norm1", "norm2"):
            keys[f"{p}.{n}.weight"] = keys[f"{p}.{n}.bias"] = (h,)
    keys[f"{pd}.mask_features.weight"] = (h, h, 1, 1)
    keys[f"{pd}.mask_features.bias"] = (h,)
    keys[f"{pd}.adapter_1.weight"] = (h, widths[0], 1, 1)
    keys[f"{pd}.adapter_1.norm.weight"] = keys[f"{pd}.adapter_1.norm.bias"] = (h,)
    keys[f"{pd}.layer_1.weight"] = (h, h, 3, 3)
    keys[f"{pd}.layer_1.norm.weight"] = keys[f"{pd}.layer_1.norm.bias"] = (h,)
    pr = "sem_seg_head.predictor"
    for i in range(dec_layers):
        for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
            p = f"{pr}.transformer_{kind}_attention_layers.{i}"
            keys[f"{p}.{attn}.in_proj_weight"] = (3 * h, h)
            keys[f"{p}.{attn}.in_proj_bias"] = (3 * h,)
            keys[f"{p}.{attn}.out_proj.weight"] = (h, h)
            keys[f"{p}.{attn}.out_proj.bias"] = (h,)
            keys[f"{p}.norm.weight"] = keys[f"{p}.norm.bias"] = (h,)
        p = f"{pr}.transformer_ffn_layers.{i}"
        keys[f"{p}.linear1.weight"], keys[f"{p}.linear1.bias"] = (ffn, h), (ffn,)
        keys[f"{p}.linear2.weight"], keys[f"{p}.linear2.bias"] = (h, ffn), (h,)
        keys[f"{p}.norm.weight"] = keys[f"{p}.norm.bias"] = (h,)
    keys[f"{pr}.decoder_norm.weight"] = keys[f"{pr}.decoder_norm.bias"] = (h,)
    keys[f"{pr}.query_feat.weight"] = keys[f"{pr}.query_embed.weight"] = (queries, h)
    keys[f"{pr}.level_embed.weight"] = (3, h)
    keys[f"{pr}.class_embed.weight"] = (num_classes + 1, h)
    keys[f"{pr}.class_embed.bias"] = (num_classes + 1,)
    for j in range(3):
        keys[f"{pr}.mask_embed.layers.{j}.weight"] = (h, h)
        keys[f"{pr}.mask_embed.layers.{j}.bias"] = (h,)
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


def hf_to_mask2former_layout(hf_state: Dict) -> Dict[str, np.ndarray]:
    """An HF Mask2Former state dict rewritten into Mask2Former's own layout (numpy arrays), by
    the correspondence of the two codebases' modules (what HF's conversion script maps, read
    the other way; written here independently of dataseg.conversion): a Mask2Former-layout
    file whose network HF can run."""
    import re
    out = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    bb, pd, tm = ("model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.",
                  "model.transformer_module.")
    P, Q = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    for key, value in hf_state.items():
        v = value.detach().numpy()
        if key.endswith("num_batches_tracked") or key == "criterion.empty_weight":
            continue
        if key.startswith(bb):
            k = key[len(bb):]
            k = k.replace("embedder.embedder.", "stem.conv1.")
            m = re.match(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.*)", k)
            if m:
                rest = m.group(3)
                j = re.match(r"layer\.(\d)\.(.*)", rest)
                rest = f"conv{int(j.group(1)) + 1}.{j.group(2)}" if j else rest
                k = f"res{int(m.group(1)) + 2}.{m.group(2)}.{rest}"
            k = k.replace("convolution.weight", "weight").replace("normalization.", "norm.")
            out["backbone." + k] = v
        elif key.startswith(pd):
            k = key[len(pd):]
            k = re.sub(r"^level_embed$", "transformer.level_embed", k)
            k = re.sub(r"^input_projections\.", "input_proj.", k)
            k = re.sub(r"^encoder\.", "transformer.encoder.", k)
            for a, b in (("self_attn_layer_norm", "norm1"), ("final_layer_norm", "norm2"),
                         ("fc1", "linear1"), ("fc2", "linear2")):
                k = k.replace(a, b)
            k = re.sub(r"^mask_projection\.", "mask_features.", k)
            k = re.sub(r"^(adapter_\d+|layer_\d+)\.0\.", r"\1.", k)
            k = re.sub(r"^(adapter_\d+|layer_\d+)\.1\.", r"\1.norm.", k)
            out[P + k] = v
        elif key.startswith(tm):
            k = key[len(tm):]
            m = re.match(r"decoder\.layers\.(\d+)\.(.*)", k)
            if m:
                i, rest = m.group(1), m.group(2)
                sa = f"transformer_self_attention_layers.{i}."
                ca = f"transformer_cross_attention_layers.{i}."
                ff = f"transformer_ffn_layers.{i}."
                split = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
                if split:
                    qkv.setdefault(f"{Q}{sa}self_attn.in_proj_{split.group(2)}",
                                   {})[split.group(1)] = value
                    continue
                for a, b in (("self_attn.out_proj.", sa + "self_attn.out_proj."),
                             ("self_attn_layer_norm.", sa + "norm."),
                             ("cross_attn_layer_norm.", ca + "norm."),
                             ("cross_attn.", ca + "multihead_attn."),
                             ("fc1.", ff + "linear1."), ("fc2.", ff + "linear2."),
                             ("final_layer_norm.", ff + "norm.")):
                    if rest.startswith(a):
                        out[Q + b + rest[len(a):]] = v
                        break
                else:
                    raise KeyError(key)
                continue
            k = k.replace("queries_features.", "query_feat.")
            k = k.replace("queries_embedder.", "query_embed.")
            k = k.replace("decoder.layernorm.", "decoder_norm.")
            k = re.sub(r"^input_projections\.", "input_proj.", k)
            k = re.sub(r"^decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.",
                       r"mask_embed.layers.\1.", k)
            out[Q + k] = v
        elif key.startswith("class_predictor."):
            out[Q + "class_embed." + key.rsplit(".", 1)[1]] = v
        else:
            raise KeyError(key)
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]]).detach().numpy()
    return out


def randomise_batchnorm(net, generator):
    """Gives every BatchNorm2d of ``net`` random affine parameters and running statistics (so
    that a conversion mixing them up shows); returns ``net``."""
    g = generator
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))
    return net
