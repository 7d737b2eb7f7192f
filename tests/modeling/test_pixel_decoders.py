"""Pixel decoders chosen by PIXEL_DECODER.NAME, their norm/activation keys, the class heads,
and one real training step with the paper's ResNet pixel decoder."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from step_helpers import unchanged_after_one_step
from timm.layers import LayerNorm2d

from dataseg.config import add_dataseg_config
from dataseg.modeling.pixel_decoder import (
    MSDeformAttnPixelDecoder,
    TransformerEncoderFPNPixelDecoder,
    ViTDetSumPixelDecoder,
    build_pixel_decoder,
)
from dataseg.modeling.text_classifier import build_class_head
from dataseg.modeling.transformer_decoder import MaskedAttentionDecoder

REPO = Path(__file__).resolve().parents[2]
SHAPES = {"res2": ShapeSpec(channels=8, stride=4), "res3": ShapeSpec(channels=12, stride=8),
          "res4": ShapeSpec(channels=16, stride=16), "res5": ShapeSpec(channels=20, stride=32)}


def small_cfg(**pixel_decoder):
    cfg = add_dataseg_config(get_cfg())
    p = cfg.MODEL.DATASEG.PIXEL_DECODER
    p.CONVS_DIM, p.ENC_LAYERS, p.ENC_HEADS, p.ENC_DIM_FEEDFORWARD = 32, 1, 2, 32
    p.ENC_POINTS, p.DEFORM_ATTN_IMPL = 2, "pytorch"
    cfg.MODEL.DATASEG.MASK_DIM = 24
    for k, v in pixel_decoder.items():
        p[k] = v
    return cfg


def features(shapes, h=64, w=96, b=2):
    return {k: torch.randn(b, s.channels, h // s.stride, w // s.stride)
            for k, s in shapes.items()}


@pytest.mark.parametrize("name,cls", [("msdeform", MSDeformAttnPixelDecoder),
                                      ("transformer_fpn", TransformerEncoderFPNPixelDecoder)])
def test_build_pixel_decoder_shapes(name, cls):
    dec = build_pixel_decoder(small_cfg(NAME=name), SHAPES)
    assert type(dec) is cls
    mask, multi = dec(features(SHAPES))
    assert mask.shape == (2, 24, 16, 24)
    assert [tuple(m.shape) for m in multi] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="PIXEL_DECODER.NAME: 'fpn' is not one of"):
        build_pixel_decoder(small_cfg(NAME="fpn"), SHAPES)
    with pytest.raises(ValueError, match="ACTIVATION: 'swish'"):
        build_pixel_decoder(small_cfg(NAME="transformer_fpn", ACTIVATION="swish"), SHAPES)
    with pytest.raises(ValueError, match="NORM: unknown norm 'XN'"):
        build_pixel_decoder(small_cfg(NORM="XN"), SHAPES)
    with pytest.raises(KeyError, match="'res1' not produced"):
        build_pixel_decoder(small_cfg(NAME="vitdet_sum", FUSE_IN_FEATURES=["res1"]), SHAPES)
    with pytest.raises(ValueError, match="CLASS_HEAD: 'mlp'"):
        build_class_head("mlp", 8, 4)


def test_norm_and_activation_keys_reach_every_conv():
    dec = build_pixel_decoder(small_cfg(NAME="transformer_fpn", NORM="LN", ACTIVATION="gelu"),
                              SHAPES)
    convs = [dec.encoder_output, *dec.lateral_convs, *dec.output_convs]
    assert all(isinstance(c.norm, LayerNorm2d) for c in convs)
    assert all(c.activation is F.gelu for c in [dec.encoder_output, *dec.output_convs])
    assert all(c.activation is None for c in dec.lateral_convs)
    assert all(layer.activation is F.gelu for layer in dec.encoder)
    # today's decoder: GN + ReLU by default (keys of trained checkpoints unchanged) ...
    default = build_pixel_decoder(small_cfg(), SHAPES)
    assert isinstance(default.input_proj[0][1], torch.nn.GroupNorm)
    assert default.output_convs[0].activation is F.relu
    assert "input_proj.0.1.weight" in default.state_dict()
    # ... and LN + GeLU when asked
    ln = build_pixel_decoder(small_cfg(NORM="LN", ACTIVATION="gelu"), SHAPES)
    assert isinstance(ln.input_proj[0][1], LayerNorm2d)
    assert isinstance(ln.lateral_convs[0].norm, LayerNorm2d)
    assert ln.output_convs[0].activation is F.gelu
    assert all(layer.activation is F.gelu for layer in ln.layers)
    mask, _ = ln(features(SHAPES))
    assert torch.isfinite(mask).all()


def test_vitdet_sum_is_the_sum_of_upsampled_levels():
    shapes = {k: ShapeSpec(channels=32, stride=s.stride) for k, s in SHAPES.items()}
    cfg = small_cfg(NAME="vitdet_sum")
    cfg.MODEL.DATASEG.MASK_DIM = 32
    dec = build_pixel_decoder(cfg, shapes)
    assert type(dec) is ViTDetSumPixelDecoder
    feats = features(shapes)
    mask, multi = dec(feats)
    # channels already match CONVS_DIM / MASK_DIM: no projection, levels passed as they are
    assert [m.data_ptr() for m in multi] == [feats[k].data_ptr() for k in ("res5", "res4", "res3")]
    expected = feats["res2"].clone()
    for k in ("res3", "res4", "res5"):
        expected += F.interpolate(feats[k], size=(16, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(mask, expected, atol=1e-6)
    # a hand-made case: constant levels 1, 2, 3, 4 sum to 10 everywhere
    const = {k: torch.full((1, 32, 64 // s.stride, 64 // s.stride), float(i + 1))
             for i, (k, s) in enumerate(shapes.items())}
    assert torch.allclose(dec(const)[0], torch.full((1, 32, 16, 16), 10.0))
    # other channel counts get 1x1 projections to CONVS_DIM and MASK_DIM
    shapes16 = {k: ShapeSpec(channels=16, stride=s.stride) for k, s in SHAPES.items()}
    proj = build_pixel_decoder(small_cfg(NAME="vitdet_sum"), shapes16)
    mask, multi = proj(features(shapes16))
    assert mask.shape == (2, 24, 16, 24) and multi[0].shape == (2, 32, 2, 3)
    with pytest.raises(ValueError, match="one channel count"):
        build_pixel_decoder(small_cfg(NAME="vitdet_sum"), SHAPES)


def test_class_heads():
    paper = build_class_head("linear_relu", 8, 5)
    ours = build_class_head("linear_relu_linear", 8, 5)
    x = torch.randn(3, 7, 8)
    assert paper(x).shape == ours(x).shape == (3, 7, 5)
    assert (paper(x) >= 0).all()
    assert (ours(x) < 0).any()
    assert sorted(paper.state_dict()) == ["0.bias", "0.weight"]
    assert sorted(ours.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    cfg = small_cfg()
    cfg.MODEL.DATASEG.CLASS_HEAD = "linear_relu"
    dec = MaskedAttentionDecoder(cfg, in_channels=32, text_dim=5)
    assert [type(m).__name__ for m in dec.class_embed] == ["Linear", "ReLU"]


@pytest.mark.slow
def test_one_training_step_with_the_papers_resnet_decoder_changes_every_parameter(tmp_path):
    same, n, trainer = unchanged_after_one_step(
        str(REPO / "configs" / "quickstart.yaml"), tmp_path, **{
            "MODEL.DATASEG.PIXEL_DECODER.NAME": "transformer_fpn",
            "MODEL.DATASEG.PIXEL_DECODER.NORM": "LN",
            "MODEL.DATASEG.PIXEL_DECODER.ACTIVATION": "gelu",
            "MODEL.DATASEG.CLASS_HEAD": "linear_relu"})
    assert isinstance(trainer.model.pixel_decoder, TransformerEncoderFPNPixelDecoder)
    assert n > 100
    assert same == []
