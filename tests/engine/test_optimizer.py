"""The optimizer builder: layer-wise lr decay (ViTDet's rule), weight decay groups, and the
fused AdamW update matching the per-tensor loop (torch's CPU default)."""
import copy
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

import dataseg.modeling  # noqa: F401  (registers DaTaSeg and the backbones)
from dataseg.config import add_dataseg_config
from dataseg.engine import build_cfg
from dataseg.engine.optimizer import build_optimizer, param_groups, vit_lr_decay_rate

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "quickstart_vitdet_tiny.yaml")
BASE_LR, WD = 0.0003, 0.05


def test_decay_rate_rule_by_hand():
    # 12 blocks, decay 0.7: embeddings get 0.7^13, block i gets 0.7^(12 - i), the rest 1
    assert vit_lr_decay_rate("backbone.vit.pos_embed", 12, 0.7) == pytest.approx(0.7 ** 13)
    assert vit_lr_decay_rate("backbone.vit.patch_embed.proj.weight", 12, 0.7) == \
        pytest.approx(0.0096889010407)  # 0.7 ** 13
    assert vit_lr_decay_rate("backbone.vit.blocks.0.attn.qkv.weight", 12, 0.7) == \
        pytest.approx(0.7 ** 12)
    assert vit_lr_decay_rate("backbone.vit.blocks.11.mlp.fc1.bias", 12, 0.7) == pytest.approx(0.7)
    # ViT-L: block 10 is layer 11 of 24, so 0.8^(25 - 11)
    assert vit_lr_decay_rate("backbone.vit.blocks.10.norm1.weight", 24, 0.8) == \
        pytest.approx(0.8 ** 14)
    assert vit_lr_decay_rate("backbone.pyramid.stages.res2.0.weight", 12, 0.7) == 1.0
    assert vit_lr_decay_rate("transformer_decoder.query_feat.weight", 12, 0.7) == 1.0


def _groups(cfg):
    """Each parameter's name -> the optimizer group holding it (groups are merged by lr and
    weight decay since issue 22; each lists its parameters' names)."""
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    return {n: g for g in opt.param_groups for n in g["param_names"]}


def test_tiny_vit_groups_hold_the_expected_multipliers():
    cfg = build_cfg(TINY, ["MODEL.DATASEG.CLASSIFIER.TEXT_DIM", 16, "SOLVER.BASE_LR", BASE_LR,
                           "SOLVER.WEIGHT_DECAY", WD, "SOLVER.BACKBONE_MULTIPLIER", 0.5])
    assert cfg.SOLVER.LAYER_DECAY == 0.7 and cfg.MODEL.VIT.DEPTH == 4
    g = _groups(cfg)
    lr = {n: x["lr"] / BASE_LR for n, x in g.items()}
    # depth 4: embeddings 0.7^5, block i 0.7^(4 - i), pyramid 1 (times the multiplier 0.5)
    assert lr["backbone.vit.pos_embed"] == pytest.approx(0.5 * 0.7 ** 5)
    assert lr["backbone.vit.patch_embed.proj.weight"] == pytest.approx(0.5 * 0.7 ** 5)
    for i in range(4):
        for p in ("norm1.weight", "attn.qkv.weight", "attn.rel_pos_h", "mlp.fc2.bias"):
            assert lr[f"backbone.vit.blocks.{i}.{p}"] == pytest.approx(0.5 * 0.7 ** (4 - i))
    pyramid = [n for n in lr if n.startswith("backbone.pyramid.")]
    assert pyramid and all(lr[n] == pytest.approx(0.5) for n in pyramid)
    rest = [n for n in lr if not n.startswith("backbone.")]
    assert rest and all(lr[n] == pytest.approx(1.0) for n in rest)
    # no weight decay on norms, biases, position embeddings and relative-position tables
    wd = {n: x["weight_decay"] for n, x in g.items()}
    for n in ("backbone.vit.pos_embed", "backbone.vit.blocks.0.attn.rel_pos_w",
              "backbone.vit.blocks.2.norm2.weight", "backbone.vit.blocks.2.norm2.bias",
              "backbone.vit.blocks.1.attn.qkv.bias", "backbone.vit.patch_embed.proj.bias",
              "pixel_decoder.decoder_proj.0.bias", "backbone.pyramid.stages.res3.2.weight"):
        assert wd[n] == 0.0, n
    for n in ("backbone.vit.blocks.1.attn.qkv.weight", "backbone.vit.patch_embed.proj.weight",
              "transformer_decoder.class_embed.0.weight"):
        assert wd[n] == WD, n


def test_layer_decay_off_and_on_a_resnet():
    cfg = build_cfg(TINY, ["MODEL.DATASEG.CLASSIFIER.TEXT_DIM", 16, "SOLVER.LAYER_DECAY", 1.0,
                           "SOLVER.BASE_LR", BASE_LR])
    assert {x["lr"] for n, x in _groups(cfg).items()} == {BASE_LR}
    cfg = build_cfg(str(REPO / "configs" / "quickstart.yaml"),
                    ["MODEL.DATASEG.CLASSIFIER.TEXT_DIM", 16, "SOLVER.LAYER_DECAY", 0.7,
                     "MODEL.EFFICIENTNET.PRETRAINED", False])
    with pytest.raises(ValueError, match="LAYER_DECAY=0.7 needs a ViT backbone"):
        _groups(cfg)


class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4))  # raw parameter: an embedding
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.norm = nn.LayerNorm(4)


class _Toy(nn.Module):
    """A backbone (embeddings, 2 blocks, a norm), a head with a shared and a frozen weight."""

    def __init__(self):
        super().__init__()
        self.backbone = _Blocks()
        self.head = nn.Linear(4, 2)
        self.tied = self.head  # the same module twice: its parameters appear once
        self.query_embed = nn.Embedding(3, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_by_hand():
    # fast unit test of param_groups alone: one group per trainable parameter, shared ones
    # once, frozen ones left out; lr = base x backbone multiplier x 0.5^(3 - layer) in the
    # backbone (pos_embed layer 0, blocks.i layer i + 1); weight decay by kind of parameter
    groups = param_groups(_Toy(), base_lr=1.0, weight_decay=0.1, weight_decay_norm=0.01,
                          weight_decay_embed=0.02, backbone_multiplier=0.2, layer_decay=0.5,
                          num_layers=2, weight_decay_bias=0.03)
    got = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in groups}
    want = {
        "backbone.pos_embed": (0.2 * 0.5 ** 3, 0.02, 1),
        "backbone.blocks.0.weight": (0.2 * 0.5 ** 2, 0.1, 1),
        "backbone.blocks.0.bias": (0.2 * 0.5 ** 2, 0.03, 1),
        "backbone.blocks.1.weight": (0.2 * 0.5, 0.1, 1),
        "backbone.blocks.1.bias": (0.2 * 0.5, 0.03, 1),
        "backbone.norm.weight": (0.2, 0.01, 1),  # not a block: layer num_layers + 1
        "backbone.norm.bias": (0.2, 0.01, 1),  # norms' biases take the norm's decay
        "head.weight": (1.0, 0.1, 1),
        "head.bias": (1.0, 0.03, 1),
        "query_embed.weight": (1.0, 0.02, 1),
    }
    assert got.keys() == want.keys()
    for name, (lr, wd, n) in want.items():
        assert got[name] == (pytest.approx(lr), wd, n), name
    # no layer decay and no bias decay: biases take WEIGHT_DECAY, the backbone the multiplier
    plain = {g["name"]: (g["lr"], g["weight_decay"]) for g in param_groups(
        _Toy(), base_lr=2.0, weight_decay=0.1, weight_decay_norm=0.0, weight_decay_embed=0.0,
        backbone_multiplier=0.5)}
    assert plain["backbone.blocks.0.bias"] == (1.0, 0.1)
    assert plain["backbone.pos_embed"] == (1.0, 0.0) and plain["head.bias"] == (2.0, 0.1)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.LazyLinear(4))


def test_fused_adamw_update_equals_per_tensor_update():
    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    x = torch.randn(4, 3, 6, 6)
    a = _model()
    a(x)  # materialise the lazy layer
    b = copy.deepcopy(a)
    start = copy.deepcopy(a)
    opt_a = build_optimizer(cfg, a)
    assert all(g["fused"] for g in opt_a.param_groups)
    opt_b = build_optimizer(cfg, b)
    for g in opt_b.param_groups:
        g["fused"], g["foreach"] = False, False  # the per-tensor loop, torch's CPU default
    for step in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (model(x + step) ** 2).mean().backward()
            opt.step()
    for (n, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), start.parameters()):
        assert not torch.equal(pa, p0), n  # the steps did move every parameter
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=n)
