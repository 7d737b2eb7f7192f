"""Published weights through MODEL.WEIGHTS and tools/convert_checkpoint.py: HF transformers
Mask2Former files (safetensors, .bin, fused or split attention projections), Mask2Former's
Detectron2 pickles (a synthesized R50 COCO panoptic file with the model zoo's keys and shapes),
ImageNet ResNet-50s in torchvision's and timm's layouts, and one clear line for each bad file."""
import pickle

import pytest
import torch
from detectron2.modeling import build_model
from m2f_helpers import (
    BASE_CONFIG,
    REPO,
    SMALL,
    dataseg_cfg,
    hf_model,
    hf_to_mask2former_layout,
    m2f_r50_coco_panoptic_keys,
    pairs,
    randomise_batchnorm,
    synthesized_m2f_checkpoint,
)

import dataseg  # noqa: F401
from dataseg.conversion import ConversionError, convert_state_dict
from dataseg.engine import (
    AtomicCheckpointer,
    CheckpointMismatchError,
    CheckpointReadError,
    build_cfg,
)

TOOL = str(REPO / "tools" / "convert_checkpoint.py")


@pytest.fixture(scope="module")
def hf():
    return hf_model(seed=5)


def _load(cfg, path):
    model = build_model(cfg).eval()
    AtomicCheckpointer(model).load(str(path))
    return model


def _same_outputs(model, hf, size=(72, 88)):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, masks = model.network(x, torch.zeros(SMALL["classes"], 8))
        ref = hf(x)
    return ((logits - ref.class_queries_logits).abs().max().item() < 1e-4
            and (masks - ref.masks_queries_logits).abs().max().item() < 1e-4)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_file_through_model_weights(hf, tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    else:
        torch.save(hf.state_dict(), path)
    assert _same_outputs(_load(dataseg_cfg(linear=True), path), hf)


def test_split_and_fused_projections_convert_to_the_same_weights(hf):
    """HF stores the decoder's self-attention split (q/k/v) and its cross-attention fused;
    the other forms (as other exporters write them) give the same DaTaSeg tensors."""
    state = hf.state_dict()
    other = {}
    for key, value in state.items():
        if ".cross_attn.in_proj_" in key:  # fused -> split
            kind = key.rsplit("in_proj_", 1)[1]
            for name, part in zip("qkv", value.chunk(3)):
                other[key.replace(f"in_proj_{kind}", f"{name}_proj.{kind}")] = part.clone()
        elif ".self_attn.q_proj." in key:  # split -> fused
            kind = key.rsplit(".", 1)[1]
            base = key.split(".self_attn.")[0] + ".self_attn."
            other[base + f"in_proj_{kind}"] = torch.cat(
                [state[base + f"{n}_proj.{kind}"] for n in "qkv"])
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            other[key] = value
    assert any(".cross_attn.q_proj." in k for k in other)
    a, _ = convert_state_dict(state, "hf")
    b, _ = convert_state_dict(other, "hf-other")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bare_mask2former_model_state_dict_converts_the_same(hf):
    """HF's Mask2FormerModel (no segmentation head) saves its keys without "model."."""
    state = hf.state_dict()
    bare = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    a, _ = convert_state_dict(state, "hf")
    b, report = convert_state_dict(bare, "hf-bare")
    assert report.layout == "hf_mask2former"
    assert set(a) - set(b) == {"transformer_decoder.class_embed.weight",
                               "transformer_decoder.class_embed.bias"}
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_text_classifier_model_drops_class_embed_and_reports_it(hf, tmp_path):
    model = build_model(dataseg_cfg(linear=False)).eval()
    state, report = convert_state_dict(hf.state_dict(), "hf", model)
    assert set(report.dropped) == {"transformer_decoder.class_embed.weight",
                                   "transformer_decoder.class_embed.bias"}
    assert "text classifier" in report.summary()
    # what is left to train: the text classifier's class head and background embedding
    assert report.missing_mask_branch == []
    assert set(report.missing) == {k for k in model.state_dict()
                                   if k.startswith(("transformer_decoder.class_embed.",
                                                    "classifier."))}


# ------------------------------------------------------------- Mask2Former's model zoo file
def _r50_cfg(linear: bool):
    cfg = build_cfg(BASE_CONFIG, ["MODEL.DEVICE", "cpu",
                                  "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL", "pytorch"])
    if linear:
        cfg.MODEL.DATASEG.CLASSIFIER.NAME = "linear"
        cfg.MODEL.DATASEG.CLASSIFIER.NUM_CLASSES = 133
    else:
        cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM = 16
    return cfg


@pytest.fixture(scope="module")
def zoo_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "model_final_94dc52.pkl"
    with open(path, "wb") as f:
        pickle.dump(synthesized_m2f_checkpoint(), f)
    return path


@pytest.mark.parametrize("linear", [True, False], ids=["linear_head", "text_classifier"])
def test_model_zoo_r50_file_loads_with_no_missing_mask_branch_key(zoo_pkl, linear):
    model = build_model(_r50_cfg(linear)).eval()
    checkpointer = AtomicCheckpointer(model)
    report = checkpointer.load(str(zoo_pkl))["conversion_report"]
    assert report.layout == "mask2former"
    assert report.missing_mask_branch == []
    assert report.unused == ["criterion.empty_weight"]
    assert len(report.converted) == len(m2f_r50_coco_panoptic_keys()) - 1
    if linear:
        assert report.missing == [] and not report.dropped
    else:
        assert set(report.dropped) == {"transformer_decoder.class_embed.weight",
                                       "transformer_decoder.class_embed.bias"}
    assert checkpointer.missing_model_keys == report.missing
    # the values land where they belong (spot checks across the three parts)
    raw = synthesized_m2f_checkpoint()["model"]
    sd = model.state_dict()
    for src, dst in [("backbone.res4.5.conv2.weight", "backbone.res4.5.conv2.weight"),
                     ("sem_seg_head.pixel_decoder.adapter_1.norm.weight",
                      "pixel_decoder.lateral_convs.0.norm.weight"),
                     ("sem_seg_head.pixel_decoder.transformer.encoder.layers.5.linear2.weight",
                      "pixel_decoder.layers.5.linear2.weight"),
                     ("sem_seg_head.predictor.transformer_cross_attention_layers.8."
                      "multihead_attn.in_proj_weight",
                      "transformer_decoder.cross_layers.8.attn.in_proj_weight"),
                     ("sem_seg_head.predictor.query_embed.weight",
                      "transformer_decoder.query_embed.weight")]:
        assert torch.equal(sd[dst], torch.from_numpy(raw[src])), dst


def test_mask2former_layout_file_computes_what_hf_computes(hf, tmp_path):
    """A Mask2Former-layout pickle of the HF model's weights (its keys and shapes exactly the
    model-zoo structure at these sizes) loads through MODEL.WEIGHTS into a network that
    computes HF's outputs: the Mask2Former-layout conversion is checked numerically."""
    m2f = hf_to_mask2former_layout(hf.state_dict())
    expected = m2f_r50_coco_panoptic_keys(
        num_classes=SMALL["classes"], stem=SMALL["stem"], widths=SMALL["widths"],
        hidden=SMALL["hidden"], enc_layers=SMALL["enc_layers"], heads=SMALL["heads"],
        enc_ffn=SMALL["enc_ffn"], dec_layers=SMALL["dec_layers"], ffn=SMALL["ffn"],
        queries=SMALL["queries"])
    expected.pop("criterion.empty_weight")
    assert {k: tuple(v.shape) for k, v in m2f.items()} == expected
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": m2f, "__author__": "Mask2Former layout of an HF model"}, f)
    assert _same_outputs(_load(dataseg_cfg(linear=True), path), hf)


# ------------------------------------------------------------------------ ImageNet ResNets
def _torchvision_resnet50():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def _timm_resnet50():
    import timm
    torch.manual_seed(0)
    return timm.create_model("resnet50", pretrained=False).eval()


def _randomise_bn(net):
    return randomise_batchnorm(net, torch.Generator().manual_seed(1))


def _stages(net, x):
    x = net.maxpool(net.act1(net.bn1(net.conv1(x))) if hasattr(net, "act1")
                    else net.relu(net.bn1(net.conv1(x))))
    out = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        out.append(x)
    return out


@pytest.mark.parametrize("make", [_torchvision_resnet50, _timm_resnet50],
                         ids=["torchvision", "timm"])
def test_imagenet_resnet50_state_dict_through_model_weights(tmp_path, make):
    net = _randomise_bn(make())
    path = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), path)
    cfg = dataseg_cfg(linear=True)
    r = cfg.MODEL.RESNETS
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP = 64, 256, 64
    model = build_model(cfg).eval()
    checkpointer = AtomicCheckpointer(model)
    report = checkpointer.load(str(path))["conversion_report"]
    assert report.layout == "resnet" and {"fc.weight", "fc.bias"} <= set(report.unused)
    assert not [k for k in report.missing if k.startswith("backbone.")]
    x = torch.randn(2, 3, 72, 88, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = _stages(net, x)
    for name, ref in pairs(("res2", "res3", "res4", "res5"), theirs):
        assert (ours[name] - ref).abs().max().item() < 1e-4, name


def test_resnet_weights_refuse_a_stride_in_1x1_model(tmp_path):
    net = _torchvision_resnet50()
    cfg = dataseg_cfg(linear=True)
    r = cfg.MODEL.RESNETS
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP = 64, 256, 64
    r.STRIDE_IN_1X1 = True
    with pytest.raises(ConversionError, match="STRIDE_IN_1X1: False"):
        convert_state_dict(net.state_dict(), "tv.pth", build_model(cfg))


# ---------------------------------------------------------------------------- bad files
def _r50_hidden_128():
    cfg = _r50_cfg(linear=False)
    d = cfg.MODEL.DATASEG
    d.HIDDEN_DIM = d.MASK_DIM = d.PIXEL_DECODER.CONVS_DIM = 128
    return cfg


def test_hidden_size_mismatch_is_one_line_naming_key_and_shapes(zoo_pkl):
    model = build_model(_r50_hidden_128())  # the checkpoint's hidden size is 256
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer(model).load(str(zoo_pkl))
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg and str(zoo_pkl) in msg
    assert ("checkpoint key sem_seg_head.pixel_decoder.input_proj.0.0.weight (-> "
            "pixel_decoder.input_proj.0.0.weight) has shape (256, 2048, 1, 1) but the model "
            "built from the config has (128, 2048, 1, 1)") in msg


def test_truncated_pickle_is_one_line(zoo_pkl, tmp_path):
    bad = tmp_path / "model_final.pkl"
    bad.write_bytes(zoo_pkl.read_bytes()[:100_000])
    with pytest.raises(CheckpointReadError) as e:
        AtomicCheckpointer(build_model(dataseg_cfg())).load(str(bad))
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_swin_mask2former_is_one_line():
    state = {"backbone.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
             "sem_seg_head.predictor.query_feat.weight": torch.zeros(100, 256)}
    with pytest.raises(ConversionError, match="not Detectron2's ResNet.*Swin") as e:
        convert_state_dict(state, "swin.pkl")
    assert "\n" not in str(e.value)


def _run_tool(*args):
    """tools/convert_checkpoint.py's main() in this process (a subprocess would spend most of
    its time importing): (exit status, stdout, stderr)."""
    import contextlib
    import importlib.util
    import io
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tool.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_tool_vit_given_as_mask2former_and_truncated_file(tmp_path, zoo_pkl):
    vit = tmp_path / "mae_vit_base.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8),
                          "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
                          "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}}, vit)
    code, _, err = _run_tool(vit, tmp_path / "out.pth", "--layout", "mask2former")
    print(err)
    assert code == 1
    err = err.strip()
    assert "\n" not in err and "given as a Mask2Former" in err and "ViT" in err
    truncated = tmp_path / "half.pkl"
    truncated.write_bytes(zoo_pkl.read_bytes()[:50_000])
    code, _, err = _run_tool(truncated, tmp_path / "out.pth")
    print(err)
    assert code == 1
    assert "\n" not in err.strip() and "truncated" in err
    assert not (tmp_path / "out.pth").exists()


def test_tool_writes_a_checkpoint_that_model_weights_loads(hf, tmp_path):
    src = tmp_path / "hf.bin"
    torch.save(hf.state_dict(), src)
    dst = tmp_path / "converted.pth"
    code, out, err = _run_tool(src, dst)
    assert code == 0, err
    assert "HF transformers Mask2Former checkpoint" in out
    converted = torch.load(dst, weights_only=True)
    assert "transformer_decoder.class_embed.weight" in converted["model"]
    assert _same_outputs(_load(dataseg_cfg(linear=True), dst), hf)


def test_tool_checks_against_a_config(hf, zoo_pkl, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(dataseg_cfg(linear=True).dump())
    src = tmp_path / "hf.bin"
    torch.save(hf.state_dict(), src)
    code, out, err = _run_tool(src, tmp_path / "ok.pth", "--config-file", config)
    assert code == 0, err
    assert "0 dropped, 0 model keys missing" in out
    # Mask2Former's R50 file (hidden 256) against an R50 config with hidden 128: one line
    config_128 = tmp_path / "r50_128.yaml"
    config_128.write_text(_r50_hidden_128().dump())
    code, out, err = _run_tool(zoo_pkl, tmp_path / "bad.pth", "--config-file", config_128)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "has shape (256, 2048, 1, 1) but the model built from the config has (128, " in err
    assert not (tmp_path / "bad.pth").exists()
