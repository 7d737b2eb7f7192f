"""ViTDet backbone: window partition, windowed vs global attention, pyramid shapes, loading
MAE / timm checkpoints, activation checkpointing, and one real training step."""
import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from safetensors.torch import save_file
from step_helpers import unchanged_after_one_step
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import dataseg.modeling  # noqa: F401  (registers the backbones)
from dataseg.engine import build_cfg
from dataseg.modeling.backbone.vitdet import (
    NotAViTCheckpointError,
    ViT,
    ViTDetBackbone,
    convert_vit_state_dict,
    load_pretrained_vit,
    load_vit_checkpoint,
    window_partition,
    window_unpartition,
)

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quickstart_vitdet_tiny.yaml")
DIM, DEPTH, HEADS = 48, 3, 3


def tiny_vit(**kw):
    args = dict(pretrain_img_size=96, img_size=128, embed_dim=DIM, depth=DEPTH,
                num_heads=HEADS, window_size=4, global_blocks=(1,))
    args.update(kw)
    return ViT(**args)


@pytest.mark.parametrize("h,w,win", [(5, 7, 4), (13, 9, 4), (14, 14, 14), (3, 17, 14),
                                     (8, 8, 4)])
def test_window_partition_then_unpartition_is_identity(h, w, win):
    x = torch.randn(2, h, w, 6)
    windows, pad_hw = window_partition(x, win)
    assert windows.shape[1:3] == (win, win)
    assert pad_hw == (-(-h // win) * win, -(-w // win) * win)
    assert windows.shape[0] == 2 * (pad_hw[0] // win) * (pad_hw[1] // win)
    assert torch.equal(window_unpartition(windows, win, (h, w), pad_hw), x)


def test_window_covering_the_image_equals_global_attention():
    torch.manual_seed(0)
    # 64x64 images -> a 4x4 token grid; window 4 covers it, so every block sees everything
    windowed = tiny_vit(img_size=64, window_size=4, global_blocks=())
    global_ = tiny_vit(img_size=64, window_size=4, global_blocks=(0, 1, 2))
    assert all(b.window_size == 4 for b in windowed.blocks)
    assert all(b.window_size == 0 for b in global_.blocks)
    with torch.no_grad():
        for name, p in windowed.named_parameters():
            if "rel_pos" in name:  # zero at init: make the relative positions matter
                p.normal_(0, 0.5)
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(windowed(x), global_(x), atol=1e-5)
    # windows smaller than the image change the result (the comparison can fail)
    small = tiny_vit(img_size=64, window_size=2, global_blocks=())
    small.load_state_dict({k: v for k, v in windowed.state_dict().items() if "rel_pos" not in k},
                          strict=False)
    assert not torch.allclose(small(x), windowed(x), atol=1e-3)


@pytest.mark.parametrize("h,w", [(64, 64), (96, 160), (224, 64), (32, 32)])
def test_pyramid_shapes(h, w):
    cfg = build_cfg(TINY, [])
    backbone = build_backbone(cfg)
    assert isinstance(backbone, ViTDetBackbone)
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (64, 4), "res3": (64, 8), "res4": (64, 16), "res5": (64, 32)}
    out = backbone(torch.randn(1, 3, h, w))
    for name, s in shapes.items():
        assert out[name].shape == (1, s.channels, h // s.stride, w // s.stride), name
    assert backbone.size_divisibility == 32


def test_pyramid_subset_and_bad_feature_name():
    b = ViTDetBackbone(vit=tiny_vit(), out_channels=16, out_features=["res5", "res3"])
    assert list(b(torch.randn(1, 3, 64, 96))) == ["res3", "res5"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        ViTDetBackbone(vit=tiny_vit(), out_features=["p2"])
    with pytest.raises(ValueError, match="GLOBAL_BLOCKS"):
        tiny_vit(global_blocks=(3,))


def _timm_vit(img_size=64):
    """A real timm ViT (timm's own key layout) with a class token and a 4x4 position grid."""
    torch.manual_seed(1)
    return VisionTransformer(img_size=img_size, patch_size=16, embed_dim=DIM, depth=DEPTH,
                             num_heads=HEADS, num_classes=10)


def _expected_pos(src_pos, g_old, g_new):
    grid = src_pos[:, 1:].reshape(1, g_old, g_old, DIM).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, g_new * g_new, DIM)


def _check_loaded(vit, report, src):
    # only the relative-position tables (new in ViTDet) are missing
    assert report["missing"] == report["new_in_vitdet"]
    assert report["missing"] == sorted(f"blocks.{i}.attn.rel_pos_{a}" for i in range(DEPTH)
                                       for a in "hw")
    assert "cls_token" in report["unused"] and "norm.weight" in report["unused"]
    assert report["pos_embed_from"] == (4, 4)
    own = vit.state_dict()
    for k in ("patch_embed.proj.weight", "blocks.2.attn.qkv.weight", "blocks.0.mlp.fc2.bias"):
        assert torch.equal(own[k], src[k]), k
    # 4x4 grid of the file -> the model's 6x6 pretraining grid (96 / 16), class token dropped
    assert torch.allclose(own["pos_embed"], _expected_pos(src["pos_embed"], 4, 6), atol=1e-5)


def test_loads_timm_layout_safetensors_with_interpolated_pos_embed(tmp_path):
    src = _timm_vit().state_dict()
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.items()}, str(path))
    vit = tiny_vit()
    report = load_vit_checkpoint(vit, str(path))
    _check_loaded(vit, report, src)
    assert "head.weight" in report["unused"]


def test_loads_mae_layout_through_the_config(tmp_path):
    src = {k: v for k, v in _timm_vit().state_dict().items() if not k.startswith("head")}
    mae = dict(src, mask_token=torch.zeros(1, 1, 32), **{
        "decoder_embed.weight": torch.zeros(32, DIM),
        "decoder_pos_embed": torch.zeros(1, 17, 32)})
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": mae, "args": argparse.Namespace(model="mae_vit_tiny")}, str(path))
    cfg = build_cfg(TINY, ["MODEL.VIT.WEIGHTS", str(path), "MODEL.VIT.EMBED_DIM", DIM,
                           "MODEL.VIT.DEPTH", DEPTH, "MODEL.VIT.NUM_HEADS", HEADS,
                           "MODEL.VIT.GLOBAL_BLOCKS", "[1]", "MODEL.VIT.PRETRAIN_IMG_SIZE", 96])
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    # building reads no file (Detectron2's convention): the trainer loads it at training start
    assert not torch.equal(backbone.vit.patch_embed.proj.weight, src["patch_embed.proj.weight"])
    model = nn.Module()
    model.backbone = backbone
    all_keys = list(model.state_dict())
    # MODEL.WEIGHTS loaded first and held ViT keys: the file is not read
    assert load_pretrained_vit(model, str(path), missing_from_weights=[]) is None
    report = load_pretrained_vit(model, cfg.MODEL.VIT.WEIGHTS, missing_from_weights=all_keys)
    _check_loaded(backbone.vit, report, src)
    assert "decoder_embed.weight" in report["unused"]


def test_sam_layout_nhwc_pos_embed_and_module_prefix(tmp_path):
    # timm's SAM ViT stores pos_embed as (1, g, g, C) with no prefix token
    src = _timm_vit().state_dict()
    grid = src["pos_embed"][:, 1:].reshape(1, 4, 4, DIM)
    out, info = convert_vit_state_dict({"patch_embed.proj.weight": src["patch_embed.proj.weight"],
                                        "blocks.0.norm1.weight": src["blocks.0.norm1.weight"],
                                        "pos_embed": grid}, grid=6)
    assert info["pos_embed_from"] == (4, 4) and info["pos_embed_prefix_tokens"] == 0
    assert torch.allclose(out["pos_embed"], _expected_pos(src["pos_embed"], 4, 6), atol=1e-5)
    # DDP-saved files: every key under "module."
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.items()}}, str(path))
    vit = tiny_vit()
    _check_loaded(vit, load_vit_checkpoint(vit, str(path)), src)


def test_bad_weight_files_give_clear_errors(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, str(bad))
    with pytest.raises(NotAViTCheckpointError, match="resnet.pth is not a ViT checkpoint"):
        load_vit_checkpoint(tiny_vit(), str(bad))
    dataseg = tmp_path / "model_final.pth"
    vit_sd = {f"backbone.vit.{k}": v for k, v in tiny_vit().state_dict().items()}
    torch.save({"model": dict(vit_sd, **{"pixel_decoder.x": torch.zeros(1)})}, str(dataseg))
    with pytest.raises(NotAViTCheckpointError, match="give it as MODEL.WEIGHTS"):
        load_vit_checkpoint(tiny_vit(), str(dataseg))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_vit_checkpoint(tiny_vit(), str(tmp_path / "nothere.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NotAViTCheckpointError, match="cannot read"):
        load_vit_checkpoint(tiny_vit(), str(junk))
    wide = tmp_path / "wide.pth"
    torch.save(_timm_vit().state_dict(), str(wide))
    with pytest.raises(ValueError, match="does not fit MODEL.VIT"):
        load_vit_checkpoint(tiny_vit(embed_dim=96, num_heads=3), str(wide))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain, ckpt = tiny_vit(), tiny_vit(use_act_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 96, 64)
    grads = []
    for m in (plain, ckpt):
        m.train()
        m(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_drop_path_rises_linearly_to_the_configured_rate():
    vit = tiny_vit(drop_path_rate=0.3)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0.0, 0.15, 0.3])


@pytest.mark.slow
def test_one_training_step_of_the_tiny_vit_model_changes_every_parameter(tmp_path):
    same, n, trainer = unchanged_after_one_step(TINY, tmp_path, **{
        "MODEL.BACKBONE.NAME": "build_vitdet_backbone",
        "MODEL.DATASEG.PIXEL_DECODER.NAME": "vitdet_sum"})
    assert isinstance(trainer.model.backbone, ViTDetBackbone)
    assert n > 100
    assert same == []
