"""Awkward but legal image files given to demo/demo.py and tools/export_model.py (grayscale,
16-bit, RGBA, CMYK, palette): each gives output; an unreadable one is skipped with one line
naming it. ``dataseg.predictor.read_image`` is the reader both use."""
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from engine_helpers import QUICKSTART, REPO, tiny_opts
from PIL import Image

from dataseg.data.synthetic import register_synthetic_world
from dataseg.engine import AtomicCheckpointer, build_cfg
from dataseg.predictor import ImageReadError, read_image

RGB = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
RAMP16 = (np.arange(40 * 56).reshape(40, 56) + 1000).astype(np.uint16)  # 1000..3239: 12-bit data


def _write_inputs(folder):
    folder.mkdir()
    Image.fromarray(RGB[..., 0]).save(folder / "gray.png")
    Image.fromarray(RAMP16).save(folder / "gray16.png")
    cv2.imwrite(str(folder / "rgb16.png"), RGB[..., ::-1].astype(np.uint16) * 16)
    Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 90, np.uint8)])).save(
        folder / "rgba.png")
    Image.fromarray(RGB).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(RGB).convert("P").save(folder / "palette.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return sorted(p.name for p in folder.iterdir() if p.name != "broken.png")


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_read_image_makes_bgr_uint8_of_every_kind(tmp_path):
    _write_inputs(tmp_path / "in")
    out = {p.name: read_image(str(p)) for p in (tmp_path / "in").iterdir()
           if p.name != "broken.png"}
    for name, im in out.items():
        assert im.shape == (40, 56, 3) and im.dtype == np.uint8, name
    gray = out["gray.png"]
    assert (gray == RGB[..., :1]).all()  # one grey level in all three channels
    # 12-bit data in a 16-bit PNG: stretched to the 8-bit range (not cut to its top byte,
    # which leaves an almost black image)
    g16 = out["gray16.png"]
    assert g16.min() == 0 and g16.max() == 255
    expected = np.round((RAMP16.astype(float) - 1000) * 255 / 2239)
    assert np.abs(g16[..., 0] - expected).max() <= 1
    assert out["rgb16.png"].max() >= 250  # 16-bit colour: same stretch
    assert (out["rgba.png"] == RGB[..., ::-1]).all()  # alpha dropped, colours kept, BGR
    assert np.abs(out["cmyk.jpg"].astype(int) - RGB[..., ::-1]).mean() < 12  # lossy JPEG
    with pytest.raises(ImageReadError, match="broken.png") as e:
        read_image(str(tmp_path / "in" / "broken.png"))
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """An untrained tiny model saved as MODEL.WEIGHTS, its config written as a yaml file."""
    tmp = tmp_path_factory.mktemp("image_inputs")
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "out", test=("synth_pan_val",)))
    register_synthetic_world(cfg)
    torch.manual_seed(0)
    AtomicCheckpointer(build_model(cfg), save_dir=str(tmp)).save("tiny")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp / "tiny.pth")
    cfg.MODEL.DEVICE = "cpu"
    config = tmp / "tiny.yaml"
    config.write_text(cfg.dump())
    return config


@pytest.mark.slow
def test_demo_segments_every_kind_and_skips_the_broken_file(tiny_config, tmp_path, capsys):
    names = _write_inputs(tmp_path / "in")
    rc = _load(REPO / "demo" / "demo.py").main([
        "--config-file", str(tiny_config), "--input", str(tmp_path / "in"),
        "--output", str(tmp_path / "out"), "--vocab", "cat; grass:stuff",
        "--task", "semantic"])
    text = capsys.readouterr()
    assert rc == 1
    skipped = [line for line in text.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "broken.png" in skipped[0], text.err
    assert f"{len(names)} of {len(names) + 1} inputs done, 1 skipped" in text.out
    for name in names:
        stem = name.rsplit(".", 1)[0]
        sem = np.asarray(Image.open(tmp_path / "out" / f"{stem}_sem.png"))
        assert sem.shape == (40, 56), name
        assert (tmp_path / "out" / f"{stem}.jpg").is_file(), name


@pytest.mark.slow
def test_export_checks_every_kind_and_names_the_broken_file(tiny_config, tmp_path, capsys):
    names = _write_inputs(tmp_path / "in")
    rc = _load(REPO / "tools" / "export_model.py").main([
        "--config-file", str(tiny_config), "--output", str(tmp_path / "exp"),
        "--dataset", "synth_pan_val", "--no-torchscript",
        "--check-images", str(tmp_path / "in" / "*")])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert [line for line in text.err.splitlines() if "skipped" in line] == [
        f"export_model.py: skipped {tmp_path / 'in' / 'broken.png'}: "
        "cannot be read as an image"], text.err
    line = next(x for x in text.out.splitlines() if x.startswith("onnxruntime vs eager"))
    stats = json.loads(line.split(": ", 1)[1])
    assert stats["images"] == len(names) and stats["max_abs_logit_diff"] <= 1e-3, stats
