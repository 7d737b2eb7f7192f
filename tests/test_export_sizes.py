"""The exported model against the eager predictor on images of any size and aspect ratio, end
to end (each side resizing, padding and post-processing the original image itself); the
fixed-size fallback refusing other sizes in one line; the optimised and int8 model files.

A tiny model with random weights (ResNet-18 stem, one deformable encoder layer, three decoder
layers) at MIN_SIZE_TEST 64 / MAX_SIZE_TEST 128: the check images pad to 64x64, 64x96, 96x64,
64x96 and 64x128, so the graph traced at 64x64 must follow the input size through the
deformable attention's level split.
"""
import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from engine_helpers import QUICKSTART, REPO, tiny_opts

import dataseg  # noqa: F401
from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine import build_cfg
from dataseg.export import (
    CHECK_SIZES,
    ExportedPredictor,
    aspect_ratio_variants,
    compare_with_eager,
    export_model,
    optimize_onnx,
    quantize_onnx,
    training_images,
)
from dataseg.predictor import DaTaSegPredictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_sizes")
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "out", **{
        "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL": "pytorch", "MODEL.DEVICE": "cpu"}))
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    torch.manual_seed(0)
    p = DaTaSegPredictor(cfg, dataset="synth_pan_val")
    result = export_model(p, tmp / "exp", (64, 64), torchscript=False)
    return cfg, p, tmp / "exp", result


def _padded_size(image, predictor):
    x = predictor.model.preprocess([predictor.preprocess(image)]).tensor
    return tuple(x.shape[-2:])


def test_graph_has_dynamic_height_and_width(exported):
    _, _, exp, result = exported
    assert result["dynamic_size"] is True
    dims = onnx.load(str(exp / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3]
    assert dims[2].dim_param and dims[3].dim_param  # symbolic, not a number
    assert json.loads((exp / "model.json").read_text())["dynamic_size"] is True


def test_exported_matches_eager_end_to_end_on_non_square_images(exported):
    cfg, p, exp, _ = exported
    images = aspect_ratio_variants(cfg)
    assert [im.shape[:2] for im in images] == list(CHECK_SIZES)
    padded = {_padded_size(im, p) for im in images}
    assert len(padded) >= 3 and (64, 64) in padded and any(h != w for h, w in padded), padded
    stats = compare_with_eager(p, ExportedPredictor(exp), images)
    assert stats["sizes"] == [list(s) for s in CHECK_SIZES]
    assert stats["max_abs_logit_diff"] <= 1e-3 and stats["max_abs_mask_diff"] <= 1e-3, stats
    assert stats["argmax_agreement"] >= 0.999, stats
    assert stats["panoptic_segments_equal"] == 1.0, stats
    assert stats["panoptic_agreement"] >= 0.999, stats
    # and through the public call, as a user gets it: same keys, sizes and segments
    onnx_pred = ExportedPredictor(exp)
    for image in images[1:3]:
        a, b = p(image), onnx_pred(image)
        assert set(a) == set(b) == {"panoptic_seg", "sem_seg"}
        assert a["sem_seg"].shape == b["sem_seg"].shape == (len(p.vocabulary),
                                                            *image.shape[:2])
        agree = (a["sem_seg"].argmax(0) == b["sem_seg"].argmax(0)).float().mean()
        assert agree >= 0.999
        assert [s["category_id"] for s in a["panoptic_seg"][1]] == \
            [s["category_id"] for s in b["panoptic_seg"][1]]


def test_fixed_size_export_refuses_other_sizes_in_one_line(exported, tmp_path):
    cfg, p, _, _ = exported
    result = export_model(p, tmp_path / "fixed", (64, 64), torchscript=False, dynamic=False)
    assert result["dynamic_size"] is False
    fixed = ExportedPredictor(tmp_path / "fixed")
    square, wide = aspect_ratio_variants(cfg)[0], aspect_ratio_variants(cfg)[1]
    assert fixed(square)["sem_seg"].shape[-2:] == square.shape[:2]  # pads to 64x64: served
    with pytest.raises(ValueError) as e:
        fixed(wide)
    msg = str(e.value)
    assert "\n" not in msg and "fixed input size 64x64" in msg and "64x96" in msg, msg


def test_optimized_model_is_loaded_and_gives_the_same_outputs(exported, tmp_path):
    _, p, exp, _ = exported
    import shutil

    shutil.copytree(exp, tmp_path / "e")
    plain = ExportedPredictor(tmp_path / "e")
    assert plain.model_path.name == "model.onnx"
    optimize_onnx(tmp_path / "e")
    opt = ExportedPredictor(tmp_path / "e")
    assert opt.model_path.name == "model.opt.onnx"
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for a, b in zip(plain.run_network(x), opt.run_network(x)):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_export_runs_and_is_recorded(exported, tmp_path, mode):
    cfg, p, exp, _ = exported
    import shutil

    shutil.copytree(exp, tmp_path / "e")
    calib = training_images(cfg, 4) if mode == "static" else None
    if calib is not None:
        assert len(calib) == 4
    path = quantize_onnx(tmp_path / "e", mode, calib)
    assert path.name == "model.int8.onnx" and path.is_file()
    info = json.loads((tmp_path / "e" / "model.json").read_text())["int8"]
    assert info["mode"] == mode and info.get("calibration_images") == (4 if calib else None)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear",
                  "DequantizeLinear", "QLinearConv", "QLinearMatMul"}, ops
    int8 = ExportedPredictor(tmp_path / "e", precision="int8")
    fp32 = ExportedPredictor(tmp_path / "e")
    image = aspect_ratio_variants(cfg)[3]
    a, b = fp32(image), int8(image)
    assert a["sem_seg"].shape == b["sem_seg"].shape
    assert torch.isfinite(b["sem_seg"]).all()
    with pytest.raises(FileNotFoundError, match="--quantize"):
        ExportedPredictor(exp, precision="int8")


def test_export_tool_checks_end_to_end_and_writes_int8(exported, tmp_path, capsys):
    cfg, _, _, _ = exported
    config = tmp_path / "c.yaml"
    config.write_text(cfg.dump())
    spec = importlib.util.spec_from_file_location("dataseg_export_tool",
                                                  REPO / "tools" / "export_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rc = tool.main(["--config-file", str(config), "--output", str(tmp_path / "o"),
                    "--dataset", "synth_pan_val", "--no-torchscript", "--quantize", "static",
                    "--calibration-images", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "any HxW multiple of 32" in out and "calibrated on 3 training images" in out, out
    lines = {k: json.loads(line.split(": ", 1)[1]) for line in out.splitlines()
             for k in ("onnxruntime vs eager", "onnxruntime int8 vs eager")
             if line.startswith(k + ",")}
    fp32 = lines["onnxruntime vs eager"]
    assert fp32["images"] == len(CHECK_SIZES) and fp32["argmax_agreement"] >= 0.999, fp32
    assert "argmax_agreement" in lines["onnxruntime int8 vs eager"]
    for f in ("model.onnx", "model.opt.onnx", "model.int8.onnx", "model.json"):
        assert (tmp_path / "o" / f).is_file(), f
    assert not np.isnan(lines["onnxruntime int8 vs eager"]["argmax_agreement"])
