"""Builtin dataset registration: names, contract metadata, vocabularies, no file I/O."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataseg.data.builtin import (
    BUILTIN_DATASETS,
    PASCAL_CONTEXT_459_NAMES,
    VOCABULARIES,
    load_vocabulary,
)

EXPECTED = {  # name: (task, evaluator_type, num classes, num things)
    "dataseg_ade20k_sem_seg_train": ("semantic", "sem_seg", 150, 100),
    "dataseg_ade20k_sem_seg_val": ("semantic", "sem_seg", 150, 100),
    "dataseg_ade20k_panoptic_val": ("panoptic", "coco_panoptic_seg", 150, 100),
    "dataseg_coco_2017_train_panoptic": ("panoptic", "coco_panoptic_seg", 133, 80),
    "dataseg_coco_2017_val_panoptic": ("panoptic", "coco_panoptic_seg", 133, 80),
    "dataseg_coco_2017_val_sem_seg": ("semantic", "sem_seg", 133, 80),
    "dataseg_objects365_v2_train_box": ("box", None, 365, 365),
    "dataseg_objects365_v2_val_box": ("box", None, 365, 365),
    "dataseg_o365_instance_seg_val": ("instance", "coco", 365, 365),
    "dataseg_cityscapes_panoptic_val": ("panoptic", "coco_panoptic_seg", 19, 8),
    "dataseg_pascal_context_59_val": ("semantic", "sem_seg", 59, 0),
    "dataseg_pascal_context_459_val": ("semantic", "sem_seg", 459, 0),
    "dataseg_pascal_voc_2012_val": ("semantic", "sem_seg", 20, 20),
}

# Runs registration in a fresh process where every read of a path under the dataset root
# (except the Pascal Context 459 names file) raises, then loads each dataset.
PROBE = textwrap.dedent("""
    import builtins, io, json, os, sys
    root = os.path.realpath(sys.argv[1]); allowed = set(sys.argv[2:])
    import detectron2.data  # registers Detectron2's own builtins
    from detectron2.data import DatasetCatalog
    d2_names = sorted(DatasetCatalog.list())
    reads = []
    def guard(fn):
        def wrapped(path, *a, **k):
            p = os.path.realpath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else ""
            if p.startswith(root) and p not in allowed:
                reads.append(p)
                raise AssertionError("registration read " + p)
            return fn(path, *a, **k)
        return wrapped
    saved = (builtins.open, io.open, os.listdir, os.scandir)
    builtins.open = io.open = guard(builtins.open)
    os.listdir, os.scandir = guard(os.listdir), guard(os.scandir)
    from dataseg.data.builtin import BUILTIN_DATASETS, register_all_builtin
    register_all_builtin(sys.argv[1])
    builtins.open, io.open, os.listdir, os.scandir = saved
    from dataseg.data.dataset_info import get_dataset_info
    out = {"d2_names": d2_names, "reads": reads, "info": {}, "errors": {}, "ignore": {},
           "synonyms": {}}
    for name in BUILTIN_DATASETS:
        try:
            i = get_dataset_info(name)
            out["info"][name] = [i.task, i.evaluator_type, i.num_classes, sum(i.is_thing)]
            out["ignore"][name] = i.ignore_label
            out["synonyms"][name] = i.class_synonyms
        except KeyError as e:
            out["info"][name] = str(e)
        try:
            DatasetCatalog.get(name)
            out["errors"][name] = None
        except Exception as e:
            out["errors"][name] = type(e).__name__ + ": " + str(e)
    print("PROBE" + json.dumps(out))
""")


def _probe(root: Path, allowed=()):
    env = dict(os.environ, DETECTRON2_DATASETS=str(root))
    res = subprocess.run([sys.executable, "-c", PROBE, str(root), *map(str, allowed)],
                         capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE")][-1]
    return json.loads(line[len("PROBE"):])


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2root")
    # files that an eager implementation would read
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "panoptic_val2017.json").write_text("{}")
    (root / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    names = root / PASCAL_CONTEXT_459_NAMES
    names.parent.mkdir(parents=True)
    names.write_text("\n".join(f"class {i}, synonym {i}" for i in range(459)) + "\n")
    return root, _probe(root, allowed=[os.path.realpath(names)])


def test_registration_reads_no_dataset_files(probe):
    _, out = probe
    assert out["reads"] == []


def test_no_clash_with_detectron2_builtins(probe):
    _, out = probe
    assert len(out["d2_names"]) > 20  # Detectron2's builtins were there to compare with
    assert not set(out["d2_names"]) & set(BUILTIN_DATASETS)
    assert len(set(BUILTIN_DATASETS)) == len(BUILTIN_DATASETS) == len(EXPECTED)


def test_contract_metadata(probe):
    _, out = probe
    for name, expected in EXPECTED.items():
        assert out["info"][name] == list(expected), name


def test_pascal_context_459_from_names_file(probe):
    _, out = probe
    name = "dataseg_pascal_context_459_val"
    assert out["info"][name] == list(EXPECTED[name])
    assert out["ignore"][name] == 65535  # 16-bit label PNGs
    assert out["synonyms"][name][:2] == [["class 0", "synonym 0"], ["class 1", "synonym 1"]]
    assert out["ignore"]["dataseg_pascal_context_59_val"] == 255


def test_pascal_context_459_bad_names_file(tmp_path):
    names = tmp_path / PASCAL_CONTEXT_459_NAMES
    names.parent.mkdir(parents=True)
    names.write_text("".join(f"class {i}\n" for i in range(458)))
    out = _probe(tmp_path, allowed=[os.path.realpath(names)])
    err = out["errors"]["dataseg_pascal_context_459_val"]
    assert "expected 459 class names" in err and "found 458" in err


def test_missing_dataset_error_names_the_path(probe):
    root, out = probe
    for name in BUILTIN_DATASETS:
        err = out["errors"][name]
        assert err is not None, f"{name} loaded from an empty root"
        assert str(root) in err, (name, err)
    assert "panoptic_val2017.json" in out["errors"]["dataseg_coco_2017_val_panoptic"]
    assert "annotations_detectron2/validation" in out["errors"]["dataseg_ade20k_sem_seg_val"]
    assert "pascal_ctx_d2/images/validation" in out["errors"]["dataseg_pascal_context_459_val"]


def test_pascal_context_459_without_names_file(tmp_path):
    out = _probe(tmp_path)
    err = out["errors"]["dataseg_pascal_context_459_val"]
    assert PASCAL_CONTEXT_459_NAMES in err and "prepare_pascal_context.py" in err


@pytest.mark.parametrize("vocab,count,things", [
    ("ade20k_150", 150, 100), ("coco_panoptic_133", 133, 80), ("objects365_v2", 365, 365),
    ("cityscapes_19", 19, 8), ("pascal_context_59", 59, None), ("pascal_voc_20", 20, 20)])
def test_vocabulary_counts_and_uniqueness(vocab, count, things):
    cats = load_vocabulary(vocab)
    assert len(cats) == count
    if things is not None:
        assert sum(c["isthing"] for c in cats) == things
    assert len({c["id"] for c in cats}) == count
    assert len({c["name"].lower() for c in cats}) == count
    for c in cats:
        assert c["name"].strip() == c["name"] and c["name"]
        assert all(isinstance(s, str) and s.strip() for s in c.get("synonyms", []))
        assert c["name"] not in c.get("synonyms", [])


def test_vocabulary_ids():
    assert [c["id"] for c in load_vocabulary("objects365_v2")] == list(range(1, 366))
    ade = load_vocabulary("ade20k_150")
    assert [c["id"] for c in ade] == list(range(1, 151))
    assert ade[1]["name"] == "building" and ade[1]["synonyms"] == ["edifice"]
    assert ade[8]["name"] == "windowpane" and "window" in ade[8]["synonyms"]
    coco = {c["name"]: c for c in load_vocabulary("coco_panoptic_133")}
    assert coco["person"]["id"] == 1 and coco["toothbrush"]["id"] == 90
    assert coco["window-other"]["id"] == 181 and coco["rug-merged"]["id"] == 200
    assert not coco["table-merged"]["isthing"] and "table" in coco["table-merged"]["synonyms"]
    city = load_vocabulary("cityscapes_19")
    assert [c["train_id"] for c in city] == list(range(19))
    assert {c["name"] for c in city if c["isthing"]} == {
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}
    assert set(VOCABULARIES) == {p.stem for p in
                                 (Path(__file__).resolve().parents[2] / "dataseg" / "data"
                                  / "vocabularies").glob("*.json")}
