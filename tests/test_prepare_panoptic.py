"""datasets/prepare_{ade20k,cityscapes}_panoptic.py on tiny inputs in the official formats."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from panopticapi.utils import rgb2id
from PIL import Image

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
sys.path.insert(0, str(DATASETS_DIR))

import prepare_ade20k_panoptic  # noqa: E402
import prepare_cityscapes_panoptic  # noqa: E402

from dataseg.data.builtin import load_vocabulary  # noqa: E402

ADE_CATS = load_vocabulary("ade20k_150")
ADE_THING_VALUES = [k + 1 for k, c in enumerate(ADE_CATS) if c["isthing"]]  # 1..150 values
ADE_STUFF_VALUES = [k + 1 for k, c in enumerate(ADE_CATS) if not c["isthing"]]
# instance-challenge category i (1..100) -> SceneParsing value: things in reverse order
ADE_MAPPING = dict(zip(range(1, 101), ADE_THING_VALUES[::-1]))


def _png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _read_ids(path):
    return rgb2id(np.asarray(Image.open(path).convert("RGB")).astype(np.int32))


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in Path(folder).rglob("*")}


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


def _check_segments(ids, segments, expected_cat, expected_group):
    """Pixel-exact: void where expected_cat < 0, one segment per expected group, areas/bboxes."""
    by_id = {s["id"]: s for s in segments}
    assert len(by_id) == len(segments) and 0 not in by_id
    assert set(np.unique(ids)) - {0} == set(by_id)
    assert np.array_equal(ids == 0, expected_cat < 0)
    groups = {}
    for sid, s in by_id.items():
        mask = ids == sid
        assert s["area"] == int(mask.sum()) and s["bbox"] == _bbox(mask)
        assert np.all(expected_cat[mask] == s["category_id"])
        group = set(expected_group[mask].tolist())
        assert len(group) == 1  # a segment is exactly one expected group ...
        groups[sid] = group.pop()
    assert len(set(groups.values())) == len(groups)  # ... and no group is split
    return by_id


# ---------------------------------------------------------------- ADE20K


def _write_ade(root, mapping_lines=None):
    ade = root / "ADEChallengeData2016"
    rng = np.random.RandomState(0)
    t0, t1, s0 = ADE_THING_VALUES[0], ADE_THING_VALUES[5], ADE_STUFF_VALUES[0]  # bed, ...
    inv = {v: k for k, v in ADE_MAPPING.items()}
    cases = {}
    for n, (h, w) in enumerate([(6, 8), (5, 7)]):
        stem = f"ADE_val_0000000{n + 1}"
        sem = rng.choice([0, s0, ADE_STUFF_VALUES[3], t0, t1], (h, w)).astype(np.uint8)
        sem[0, 0], sem[0, 1], sem[0, 2] = 0, ADE_STUFF_VALUES[-1], 150  # 150 = flag (thing)
        sem[1, 1] = 150
        ins = np.zeros((h, w, 3), np.uint8)
        ins[..., 2] = 77  # B channel carries nothing we use
        # two instances of t0, one of t1; pixels of t0/t1 outside them stay void
        for g, (value, rows) in enumerate([(t0, slice(0, 2)), (t0, slice(2, 3)),
                                           (t1, slice(3, 5))], 1):
            sel = np.zeros((h, w), bool)
            sel[rows, 2:] = sem[rows, 2:] == value
            ins[sel, 0], ins[sel, 1] = inv[value], g
        ins[h - 1, w - 1] = (inv[t1], 9, 0)  # an instance on a stuff/void pixel wins
        sem[h - 1, w - 1] = s0
        _png(sem, ade / "annotations" / "validation" / f"{stem}.png")
        _png(ins, ade / "annotations_instance" / "validation" / f"{stem}.png")
        cases[stem] = (sem, ins)
    lines = mapping_lines or (["Instacne100\tSceneParsing150\tFullADE20K"]
                              + [f"{i}\t{v}\t{1000 + i}" for i, v in ADE_MAPPING.items()])
    (ade / "categoryMapping.txt").write_text("\n".join(lines) + "\n")
    return ade, cases


def _ade_expected(sem, ins):
    r, g = ins[..., 0].astype(int), ins[..., 1].astype(int)
    has = (r > 0) & (g > 0)
    thing = np.isin(sem, ADE_THING_VALUES)
    cat = np.where(has, np.vectorize(lambda x: ADE_MAPPING.get(x, 1))(r) - 1,
                   np.where((sem == 0) | thing, -1, sem.astype(int) - 1))
    group = np.where(has, 1000 + r * 256 + g, sem.astype(int))
    return cat, group


def test_ade20k_panoptic(tmp_path):
    ade, cases = _write_ade(tmp_path)
    prepare_ade20k_panoptic.main(["--root", str(tmp_path)])
    data = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(150))
    assert [c["isthing"] for c in data["categories"]] == [c["isthing"] for c in ADE_CATS]
    assert [c["name"] for c in data["categories"]] == [c["name"] for c in ADE_CATS]
    assert [i["id"] for i in data["images"]] == sorted(cases)
    for img, ann in zip(data["images"], data["annotations"]):
        sem, ins = cases[img["id"]]
        assert img["file_name"] == img["id"] + ".jpg"
        assert (img["height"], img["width"]) == sem.shape
        assert ann["image_id"] == img["id"] and ann["file_name"] == img["id"] + ".png"
        ids = _read_ids(ade / "ade20k_panoptic_val" / ann["file_name"])
        cat, group = _ade_expected(sem, ins)
        by_id = _check_segments(ids, ann["segments_info"], cat, group)
        assert all(s["iscrowd"] == 0 for s in by_id.values())
        stuff = [s for s in by_id.values() if not ADE_CATS[s["category_id"]]["isthing"]]
        assert len(stuff) == len({s["category_id"] for s in stuff})  # one per stuff class
        things = [s for s in by_id.values() if ADE_CATS[s["category_id"]]["isthing"]]
        assert len(things) == len(np.unique(ins[..., 0].astype(int) * 256 + ins[..., 1])) - 1
        h, w = sem.shape
        assert ADE_CATS[by_id[ids[h - 1, w - 1]]["category_id"]]["isthing"]
        assert by_id[ids[0, 1]]["category_id"] == ADE_STUFF_VALUES[-1] - 1 and ids[0, 0] == 0
        assert ids[1, 1] == 0  # a thing pixel (flag) outside every instance is void

    # rerun: nothing rewritten; a deleted PNG is rewritten and the json rebuilt identically
    before = _mtimes(ade)
    prepare_ade20k_panoptic.main(["--root", str(tmp_path)])
    assert _mtimes(ade) == before
    (ade / "ade20k_panoptic_val" / "ADE_val_00000001.png").unlink()
    prepare_ade20k_panoptic.main(["--root", str(tmp_path)])
    assert json.loads((ade / "ade20k_panoptic_val.json").read_text()) == data
    assert not list(ade.rglob(".*"))  # no temp files left


def test_ade20k_panoptic_missing_inputs(tmp_path):
    ade, _ = _write_ade(tmp_path)
    (ade / "annotations_instance" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(FileNotFoundError,
                       match="annotations_instance/validation/ADE_val_00000002.png"):
        prepare_ade20k_panoptic.main(["--root", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="nowhere/categoryMapping.txt"):
        prepare_ade20k_panoptic.main(["--root", str(tmp_path), "--category-mapping",
                                      str(tmp_path / "nowhere" / "categoryMapping.txt")])
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        prepare_ade20k_panoptic.main(["--root", str(tmp_path / "empty")])


@pytest.mark.parametrize("lines, message", [
    (["1 8 165", "x"], "expected '<instance id> <SceneParsing150 id>"),
    ([f"{i} {v}" for i, v in list(ADE_MAPPING.items())[:99]], "got 99 entries"),
    ([f"{i} 1" for i in range(1, 101)], "which is stuff"),
])
def test_ade20k_category_mapping_is_strict(tmp_path, lines, message):
    _write_ade(tmp_path, mapping_lines=lines)
    with pytest.raises(ValueError, match=message):
        prepare_ade20k_panoptic.main(["--root", str(tmp_path)])


# ---------------------------------------------------------------- Cityscapes

CITY_THINGS = {c["id"] for c in load_vocabulary("cityscapes_19") if c["isthing"]}
CITY_FRAMES = ("frankfurt_000000_000294", "lindau_000001_000019", "lindau_000002_000019")


def _write_cityscapes(root):
    gt = root / "cityscapes" / "gtFine" / "val"
    rng = np.random.RandomState(2)
    # 0 unlabeled, 1 ego vehicle, 4 static (void); 7 road, 23 sky (stuff); 26 / 24 crowd
    # groups; 26000.. cars, 24000 person, 33001 bicycle; 29000 caravan (ignored in evaluation)
    values = np.array([0, 1, 4, 7, 23, 26, 24, 26000, 26001, 24000, 33001, 29000], np.uint16)
    cases = {}
    for frame in CITY_FRAMES:
        ids = rng.choice(values, (5, 9)).astype(np.uint16)
        ids[0, :3] = [26, 26001, 29000]
        _png(ids, gt / frame.split("_")[0] / f"{frame}_gtFine_instanceIds.png")
        cases[frame] = ids
    return root / "cityscapes" / "gtFine", cases


def test_cityscapes_panoptic(tmp_path):
    gt, cases = _write_cityscapes(tmp_path)
    assert Image.open(gt / "val" / "lindau" / f"{CITY_FRAMES[1]}_gtFine_instanceIds.png"
                      ).mode.startswith("I")  # 16-bit, as the official PNGs
    prepare_cityscapes_panoptic.main(["--root", str(tmp_path)])
    data = json.loads((gt / "cityscapes_panoptic_val.json").read_text())
    vocab = load_vocabulary("cityscapes_19")
    assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"]] == [
        (c["id"], c["name"], c["isthing"]) for c in vocab]
    assert [i["id"] for i in data["images"]] == list(CITY_FRAMES)
    for img, ann in zip(data["images"], data["annotations"]):
        ids_in = cases[img["id"]].astype(int)
        assert img["file_name"] == img["id"] + "_leftImg8bit.png"
        assert ann["file_name"] == img["id"] + "_gtFine_panoptic.png"
        assert (img["height"], img["width"]) == ids_in.shape
        ids = _read_ids(gt / "cityscapes_panoptic_val" / ann["file_name"])
        label = np.where(ids_in >= 1000, ids_in // 1000, ids_in)
        keep = np.isin(label, [c["id"] for c in vocab])
        assert np.array_equal(ids, np.where(keep, ids_in, 0))
        by_id = _check_segments(ids, ann["segments_info"], np.where(keep, label, -1), ids_in)
        for sid, s in by_id.items():
            assert s["iscrowd"] == int(sid < 1000 and s["category_id"] in CITY_THINGS)
        assert by_id[26]["iscrowd"] == 1 and by_id[26001]["iscrowd"] == 0
        assert ids[0, 2] == 0  # caravan -> void
        assert by_id[7]["iscrowd"] == 0

    before = _mtimes(gt)
    prepare_cityscapes_panoptic.main(["--root", str(tmp_path)])
    assert _mtimes(gt) == before
    (gt / "cityscapes_panoptic_val" / f"{CITY_FRAMES[0]}_gtFine_panoptic.png").unlink()
    prepare_cityscapes_panoptic.main(["--root", str(tmp_path)])
    assert json.loads((gt / "cityscapes_panoptic_val.json").read_text()) == data
    assert not list(gt.rglob(".*"))


def test_cityscapes_panoptic_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="cityscapes/gtFine"):
        prepare_cityscapes_panoptic.main(["--root", str(tmp_path)])
    (tmp_path / "cityscapes" / "gtFine" / "val" / "lindau").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="_gtFine_instanceIds.png in .*gtFine/val"):
        prepare_cityscapes_panoptic.main(["--root", str(tmp_path)])


# ---------------------------------------------------------------- registration / loading

_LOAD = """
import json, sys
from detectron2.data import DatasetCatalog
import dataseg.data.builtin  # registers the builtin names under $DETECTRON2_DATASETS
out = {}
for name in sys.argv[1:]:
    recs = DatasetCatalog.get(name)
    out[name] = [{k: r[k] for k in ("file_name", "pan_seg_file_name", "image_id",
                                    "height", "width", "segments_info")} for r in recs]
print(json.dumps(out))
"""


def test_prepared_panoptic_sets_load_through_builtin_names(tmp_path):
    ade, ade_cases = _write_ade(tmp_path)
    gt, city_cases = _write_cityscapes(tmp_path)
    for stem, (sem, _) in ade_cases.items():
        _png(np.zeros(sem.shape + (3,), np.uint8), ade / "images" / "validation" / f"{stem}.jpg")
        _png(sem, ade / "annotations_detectron2" / "validation" / f"{stem}.png")
    for frame, ids in city_cases.items():
        _png(np.zeros(ids.shape + (3,), np.uint8), tmp_path / "cityscapes" / "leftImg8bit" /
             "val" / frame.split("_")[0] / f"{frame}_leftImg8bit.png")
    for script in ("prepare_ade20k_panoptic.py", "prepare_cityscapes_panoptic.py"):
        res = subprocess.run([sys.executable, str(DATASETS_DIR / script), "--root",
                              str(tmp_path)], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", _LOAD, "dataseg_ade20k_panoptic_val",
                          "dataseg_cityscapes_panoptic_val"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=str(DATASETS_DIR.parent))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])

    ade_json = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    recs = out["dataseg_ade20k_panoptic_val"]
    assert [r["image_id"] for r in recs] == sorted(ade_cases)
    for r, ann in zip(recs, ade_json["annotations"]):
        assert r["file_name"] == str(ade / "images" / "validation" / f"{r['image_id']}.jpg")
        assert r["pan_seg_file_name"] == str(ade / "ade20k_panoptic_val" / ann["file_name"])
        # contiguous ids = the json ids (0..149) for ADE
        assert [(s["id"], s["category_id"], s["isthing"]) for s in r["segments_info"]] == [
            (s["id"], s["category_id"], bool(ADE_CATS[s["category_id"]]["isthing"]))
            for s in ann["segments_info"]]

    train_id = {c["id"]: c["train_id"] for c in load_vocabulary("cityscapes_19")}
    city_json = json.loads((gt / "cityscapes_panoptic_val.json").read_text())
    recs = out["dataseg_cityscapes_panoptic_val"]
    assert [r["image_id"] for r in recs] == list(CITY_FRAMES)
    for r, ann in zip(recs, city_json["annotations"]):
        city = r["image_id"].split("_")[0]
        assert r["file_name"] == str(tmp_path / "cityscapes" / "leftImg8bit" / "val" / city /
                                     f"{r['image_id']}_leftImg8bit.png")
        assert r["pan_seg_file_name"] == str(gt / "cityscapes_panoptic_val" / ann["file_name"])
        assert [(s["id"], s["category_id"], s["iscrowd"]) for s in r["segments_info"]] == [
            (s["id"], train_id[s["category_id"]], s["iscrowd"]) for s in ann["segments_info"]]
