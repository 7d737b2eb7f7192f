"""datasets/prepare_*.py on tiny inputs in the official formats: pixel-exact, resumable."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
sys.path.insert(0, str(DATASETS_DIR))

import prepare_ade20k_sem_seg  # noqa: E402
import prepare_coco_semantic  # noqa: E402
import prepare_pascal_voc  # noqa: E402

from dataseg.data.builtin import load_vocabulary  # noqa: E402


def _png(array, path, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette:
        im = im.convert("P") if im.mode != "P" else im
        im.putpalette(list(np.random.RandomState(0).randint(0, 255, 768)))
    im.save(path)


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in Path(folder).glob("*")}


def test_ade20k_semantic(tmp_path):
    rng = np.random.RandomState(0)
    ade = tmp_path / "ADEChallengeData2016"
    labels = {}
    for split in ("training", "validation"):
        for i in range(2):
            lab = rng.randint(0, 151, (7, 9)).astype(np.uint8)
            lab[0, 0], lab[0, 1] = 0, 150
            labels[(split, i)] = lab
            _png(lab, ade / "annotations" / split / f"ADE_{split}_{i}.png")
    prepare_ade20k_sem_seg.main(["--root", str(tmp_path)])
    for (split, i), lab in labels.items():
        out_path = ade / "annotations_detectron2" / split / f"ADE_{split}_{i}.png"
        out = np.asarray(Image.open(out_path))
        expected = np.where(lab == 0, 255, lab.astype(int) - 1)
        assert out.dtype == np.uint8 and np.array_equal(out, expected)
        assert out[0, 0] == 255 and out[0, 1] == 149
    before = _mtimes(ade / "annotations_detectron2" / "validation")
    # a second run writes nothing; a deleted output is rewritten
    (ade / "annotations_detectron2" / "training" / "ADE_training_0.png").unlink()
    prepare_ade20k_sem_seg.main(["--root", str(tmp_path)])
    assert _mtimes(ade / "annotations_detectron2" / "validation") == before
    assert (ade / "annotations_detectron2" / "training" / "ADE_training_0.png").is_file()
    assert not list(ade.rglob(".*"))  # no temp files left


def test_ade20k_missing_input_names_it(tmp_path):
    (tmp_path / "ADEChallengeData2016").mkdir()
    with pytest.raises(FileNotFoundError, match="annotations/training"):
        prepare_ade20k_sem_seg.main(["--root", str(tmp_path)])


def test_coco_semantic_from_panoptic(tmp_path):
    coco = tmp_path / "coco"
    contiguous = {c["id"]: k for k, c in enumerate(load_vocabulary("coco_panoptic_133"))}
    # segment ids encoded as R + 256 G + 256^2 B, one of them above 255 to test the decoding
    seg_ids = np.array([[0, 5, 5, 70000], [300, 300, 5, 70000], [0, 0, 999, 999]])
    rgb = np.stack([seg_ids % 256, seg_ids // 256 % 256, seg_ids // 65536], -1).astype(np.uint8)
    _png(rgb, coco / "panoptic_val2017" / "000000000001.png")
    segments = [{"id": 5, "category_id": 1}, {"id": 300, "category_id": 181},
                {"id": 70000, "category_id": 200}]  # 999 has no segment -> 255
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps({
        "annotations": [{"file_name": "000000000001.png", "image_id": 1,
                         "segments_info": segments}], "categories": []}))
    prepare_coco_semantic.main(["--root", str(tmp_path)])
    out_path = coco / "panoptic_semseg_val2017" / "000000000001.png"
    out = np.asarray(Image.open(out_path))
    lut = {0: 255, 999: 255, 5: contiguous[1], 300: contiguous[181], 70000: contiguous[200]}
    assert np.array_equal(out, np.vectorize(lut.get)(seg_ids))
    assert contiguous[1] == 0 and contiguous[200] == 132
    mtime = out_path.stat().st_mtime_ns
    prepare_coco_semantic.main(["--root", str(tmp_path)])
    assert out_path.stat().st_mtime_ns == mtime


def test_coco_semantic_unknown_category(tmp_path):
    coco = tmp_path / "coco"
    _png(np.zeros((2, 2, 3), np.uint8) + 1, coco / "panoptic_val2017" / "a.png")
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps({
        "annotations": [{"file_name": "a.png", "segments_info": [{"id": 1, "category_id": 12}]}]}))
    with pytest.raises(ValueError, match="panoptic_val2017.json: a.png segment 1: unknown"):
        prepare_coco_semantic.main(["--root", str(tmp_path)])


def test_pascal_voc(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.RandomState(1)
    labels = {}
    for i in ("2007_000033", "2007_000042"):
        lab = rng.randint(0, 21, (6, 8)).astype(np.uint8)
        lab[0, :3] = [0, 20, 255]
        labels[i] = lab
        _png(lab, voc / "SegmentationClass" / f"{i}.png", palette=True)
        _png(rng.randint(0, 255, (6, 8, 3)).astype(np.uint8), voc / "JPEGImages" / f"{i}.jpg")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(labels) + "\n")
    assert Image.open(voc / "SegmentationClass" / "2007_000033.png").mode == "P"
    prepare_pascal_voc.main(["--root", str(tmp_path)])
    out_dir = tmp_path / "pascal_voc_d2"
    for i, lab in labels.items():
        out = np.asarray(Image.open(out_dir / "annotations_pascal20" / "validation" / f"{i}.png"))
        expected = np.where((lab >= 1) & (lab <= 20), lab.astype(int) - 1, 255)
        assert np.array_equal(out, expected)
        assert list(out[0, :3]) == [255, 19, 255]
        assert ((out_dir / "images" / "validation" / f"{i}.jpg").read_bytes()
                == (voc / "JPEGImages" / f"{i}.jpg").read_bytes())
    before = _mtimes(out_dir / "annotations_pascal20" / "validation")
    prepare_pascal_voc.main(["--root", str(tmp_path)])
    assert _mtimes(out_dir / "annotations_pascal20" / "validation") == before


def test_pascal_voc_missing_label_names_it(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    with pytest.raises(FileNotFoundError, match="SegmentationClass/2007_000033.png"):
        prepare_pascal_voc.main(["--root", str(tmp_path)])


def test_script_runs_as_a_command(tmp_path):
    res = subprocess.run([sys.executable, str(DATASETS_DIR / "prepare_ade20k_sem_seg.py"),
                          "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "ADEChallengeData2016" in res.stderr


def test_objects365_instance_benchmark_ignores_skipped(tmp_path):
    import prepare_objects365

    o365 = tmp_path / "objects365"
    for split in ("train", "val"):
        (o365 / "images" / split).mkdir(parents=True)
    cats = [{"id": c["id"], "name": c["name"]} for c in load_vocabulary("objects365_v2")]
    (o365 / "annotations").mkdir()
    for split in ("train", "val"):
        (o365 / "annotations" / f"zhiyuan_objv2_{split}.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": cats}))
    poly = [[1, 1, 5, 1, 5, 5]]
    anns = [{"id": 1, "bbox": [1, 1, 4, 4], "segmentation": poly, "category_id": 3},
            {"id": 2, "bbox": [2, 2, 3, 3], "segmentation": [], "category_id": 3},
            {"id": 3, "bbox": [0, 0, 2, 2], "segmentation": poly, "ignore": 1, "category_id": 3},
            {"id": 4, "bbox": [0, 0, 2, 2], "segmentation": poly, "iscrowd": 1, "category_id": 3}]
    (o365 / "annotations" / "o365_instance_seg_val.json").write_text(
        json.dumps({"images": [], "annotations": anns, "categories": cats}))
    prepare_objects365.main(["--root", str(tmp_path)])
    out = json.loads((o365 / "annotations" / "o365_instance_seg_val_d2.json").read_text())
    assert [a["iscrowd"] for a in out["annotations"]] == [0, 1, 1, 1]
    assert out["annotations"][1]["segmentation"] == [[2, 2, 5, 2, 5, 5, 2, 5]]
    assert out["annotations"][0]["segmentation"] == poly
    assert all("ignore" not in a for a in out["annotations"])


def test_pascal_context_59_and_459(tmp_path):
    import prepare_pascal_context
    from scipy.io import savemat

    ctx59 = [c["name"] for c in load_vocabulary("pascal_context_59")]
    names = [f"thing{i}" for i in range(459 - 59)] + ctx59[::-1]  # 59 names at the end
    ctx = tmp_path / "pascal_context"
    (ctx / "trainval").mkdir(parents=True)
    (ctx / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    _png(np.zeros((3, 4, 3), np.uint8), voc / "JPEGImages" / "2008_000001.jpg")
    lab = np.array([[0, 1, 459, 400], [401, 458, 2, 0], [5, 5, 5, 5]], np.uint16)
    savemat(ctx / "trainval" / "2008_000001.mat", {"LabelMap": lab})
    prepare_pascal_context.main(["--root", str(tmp_path)])
    out = tmp_path / "pascal_ctx_d2"
    assert (out / "labels_459.txt").read_text().splitlines() == names
    l459 = np.asarray(Image.open(out / "annotations_ctx459" / "validation" / "2008_000001.png"))
    assert np.array_equal(l459, np.where(lab == 0, 65535, lab.astype(int) - 1))
    l59 = np.asarray(Image.open(out / "annotations_ctx59" / "validation" / "2008_000001.png"))
    expected = np.full(lab.shape, 255)
    for k, n in enumerate(ctx59):
        expected[lab == names.index(n) + 1] = k
    assert np.array_equal(l59, expected)
    assert l59[0, 2] == 0 and l59[0, 3] == 255  # 459 = ctx59[0] ("aeroplane"); 400 = thing399
