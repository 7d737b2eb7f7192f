"""The synthetic world: deterministic, cached, atomic, in the real formats, registered via
register.py, and with masks that are not boxes."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools import mask as mask_utils

from dataseg.data.dataset_info import get_dataset_info
from dataseg.data.synthetic import (
    DATASETS,
    SyntheticWorldParams,
    ensure_generated,
    generate_world,
    register_synthetic_world,
    vocabulary,
)
from dataseg.data.synthetic import generate as generate_mod
from dataseg.data.synthetic.layout import SPLITS, split_paths
from dataseg.data.synthetic.scene import render_scene, scene_rng, tight_box
from dataseg.data.synthetic.vocabulary import scene_kinds

REPO = Path(__file__).resolve().parents[2]


def tiny(root, **kw):
    base = dict(root=str(root), seed=3, image_size=64, num_semantic_train=3,
                num_panoptic_train=4, num_box_train=4, num_val=5)
    base.update(kw)
    return SyntheticWorldParams(**base)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    params = tiny(tmp_path_factory.mktemp("synth"))
    return params, ensure_generated(params)


def _spec(split):
    return next(s for s in SPLITS if s.split == split)


def _files(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _rerender(params, split, index):
    spec = _spec(split)
    things, stuff = scene_kinds(spec.domain)
    return render_scene(spec.domain, things, stuff, params.image_size,
                        scene_rng(params.seed, spec.code, index))


def test_generation_is_deterministic(tmp_path, world):
    params, first = world
    second = tmp_path / "again"
    generate_world(params, second)
    names = _files(first)
    assert names == _files(second) and len(names) > 50
    for rel in names:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    other = tmp_path / "other_seed"
    generate_world(tiny(tmp_path, seed=4), other)
    jpg = "sem/images/train/sem_train_000000.jpg"
    assert (other / jpg).read_bytes() != (first / jpg).read_bytes()


def test_cached_world_is_not_regenerated(world, monkeypatch):
    params, path = world

    def fail(*a, **k):
        raise AssertionError("regenerated a cached world")

    monkeypatch.setattr(generate_mod, "generate_world", fail)
    assert ensure_generated(params) == path
    assert path.name == params.fingerprint()
    assert tiny(params.root, num_val=6).fingerprint() != params.fingerprint()


def test_concurrent_requests_publish_one_complete_world(tmp_path):
    params = tiny(tmp_path, num_semantic_train=1, num_panoptic_train=1, num_box_train=1,
                  num_val=1, image_size=32)
    results, errors = [], []

    def run():
        try:
            results.append(ensure_generated(params))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert (results[0] / "summary.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [params.fingerprint()]  # no .tmp-* left


@pytest.mark.parametrize("split", ["pan_val", "sem_val", "pan_train"])
def test_panoptic_png_matches_json(world, split):
    params, root = world
    spec = _spec(split)
    paths = split_paths(root, spec)
    data = json.loads(paths.panoptic_json.read_text())
    cats = {c["id"]: c for c in data["categories"]}
    vocab = vocabulary(spec.domain)
    assert [c["name"] for c in data["categories"]] == [n[0] for n in vocab.names]
    assert len(data["annotations"]) == len(data["images"]) == getattr(params, spec.count_field)
    n_things = 0
    for ann in data["annotations"]:
        ids = rgb2id(np.asarray(Image.open(paths.panoptic_root / ann["file_name"])))
        seg_ids = {s["id"] for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == seg_ids
        stuff_cats = []
        for s in ann["segments_info"]:
            m = ids == s["id"]
            assert s["area"] == int(m.sum()) > 0
            assert s["bbox"] == list(tight_box(m))
            assert s["category_id"] in cats
            n_things += cats[s["category_id"]]["isthing"]
            if not cats[s["category_id"]]["isthing"]:
                stuff_cats.append(s["category_id"])
        assert len(stuff_cats) == len(set(stuff_cats)), "one segment per stuff class"
        if spec.semantic:  # sem_val: panoptic and semantic ground truth agree
            label = np.asarray(Image.open(paths.sem_seg_root / ann["file_name"]))
            contiguous = {c["id"]: i for i, c in enumerate(data["categories"])}
            for s in ann["segments_info"]:
                assert (label[ids == s["id"]] == contiguous[s["category_id"]]).all()
            assert (label[ids == 0] == 255).all()
    assert n_things > 0


@pytest.mark.parametrize("split", ["sem_train", "unseen_val"])
def test_semantic_labels_within_vocabulary(world, split):
    params, root = world
    spec = _spec(split)
    paths = split_paths(root, spec)
    k = len(vocabulary(spec.domain).kinds)
    seen = set()
    labels = sorted(paths.sem_seg_root.glob("*.png"))
    assert len(labels) == getattr(params, spec.count_field)
    for p in labels:
        lab = np.asarray(Image.open(p))
        assert lab.dtype == np.uint8 and lab.shape == (params.image_size,) * 2
        values = set(np.unique(lab).tolist())
        assert values <= set(range(k)) | {255}
        assert (lab != 255).mean() > 0.9
        seen |= values
    assert len(seen - {255}) >= 4


def test_box_json_is_tight_around_visible_pixels(world):
    params, root = world
    paths = split_paths(root, _spec("box_train"))
    data = json.loads(paths.json_file.read_text())
    assert all("segmentation" not in a for a in data["annotations"])
    names = {c["id"]: c["name"] for c in data["categories"]}
    vocab = vocabulary("box", things_only=True)
    for img in data["images"]:
        index = img["id"] - 1
        scene = _rerender(params, "box_train", index)
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == len(scene.instances)
        for ann, inst in zip(anns, scene.instances):
            assert ann["bbox"] == list(tight_box(inst.mask))
            assert names[ann["category_id"]] == vocab.names[vocab.kinds.index(inst.kind)][0]
        jpg = np.asarray(Image.open(paths.image_root / img["file_name"]).convert("RGB"))
        assert np.abs(jpg.astype(int) - scene.image.astype(int)).mean() < 8


def test_instance_masks_match_rendered_objects_and_are_not_boxes(world):
    params, root = world
    paths = split_paths(root, _spec("box_val"))
    data = json.loads(paths.json_file.read_text())
    ratios = []
    for img in data["images"]:
        scene = _rerender(params, "box_val", img["id"] - 1)
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == len(scene.instances)
        for ann, inst in zip(anns, scene.instances):
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert (m == inst.mask).all()
            assert ann["area"] == int(m.sum()) and ann["bbox"] == list(tight_box(m))
            ratios.append(ann["area"] / (ann["bbox"][2] * ann["bbox"][3]))
    assert len(ratios) >= 10
    assert np.mean(ratios) < 0.8 and min(ratios) < 0.6


def test_vocabularies_overlap_as_designed():
    sem, pan = vocabulary("sem"), vocabulary("pan")
    box, unseen = vocabulary("box", things_only=True), vocabulary("unseen")
    shared = set(sem.kinds) & set(pan.kinds)
    assert len(shared) >= 0.8 * len(sem.kinds) and len(pan.kinds) > len(sem.kinds)
    renamed = [k for k in shared if sem.names[sem.kinds.index(k)] != pan.names[pan.kinds.index(k)]]
    assert len(renamed) >= 5
    pan_things = {k for k, t in zip(pan.kinds, pan.is_thing) if t}
    assert len(set(box.kinds) & pan_things) >= 4 and set(box.kinds) - pan_things
    train_names = {n for v in (sem, pan, box) for names in v.names for n in names}
    assert not train_names & {n for names in unseen.names for n in names}


def test_registration_loads_through_detectron2(tmp_path):
    params = tiny(tmp_path / "root")
    register_synthetic_world(params)
    try:
        assert not (tmp_path / "root").exists(), "registration must not write"
        expected = {"synth_sem_train": ("semantic", "sem_seg"),
                    "synth_sem_val": ("semantic", "sem_seg"),
                    "synth_sem_panoptic_val": ("panoptic", "coco_panoptic_seg"),
                    "synth_pan_train": ("panoptic", "coco_panoptic_seg"),
                    "synth_pan_val": ("panoptic", "coco_panoptic_seg"),
                    "synth_box_train": ("box", None),
                    "synth_box_val_instance": ("instance", "coco"),
                    "synth_unseen_sem_val": ("semantic", "sem_seg")}
        assert set(expected) == set(DATASETS)
        for name, (task, evaluator) in expected.items():
            info = get_dataset_info(name)
            assert (info.task, info.evaluator_type) == (task, evaluator)
            records = DatasetCatalog.get(name)
            assert records and all(os.path.isfile(r["file_name"]) for r in records)
            assert all(r["dataset_name"] == name for r in records)
        assert (params.world_dir() / "summary.json").is_file()
        pan = DatasetCatalog.get("synth_sem_panoptic_val")
        assert all(os.path.isfile(r["sem_seg_file_name"]) for r in pan)
        meta = MetadataCatalog.get("synth_sem_panoptic_val")
        assert any(meta.is_thing) and not all(meta.is_thing)
        inst = DatasetCatalog.get("synth_box_val_instance")
        assert sum(len(r["annotations"]) for r in inst) > 0
        # re-registering with other parameters replaces the entries
        other = tiny(tmp_path / "other", seed=9)
        register_synthetic_world(other)
        assert MetadataCatalog.get("synth_pan_val").panoptic_root.startswith(
            str(other.world_dir()))
        assert not other.world_dir().exists()
    finally:
        register_synthetic_world()  # back to the defaults (writes nothing)


def test_registration_goes_through_the_core_once(tmp_path, monkeypatch):
    """Each synth_* name is registered once, by register.py's core, with "generate if missing"
    as its before_load hook: no catalog entry is removed and re-registered around a wrapper."""
    params = tiny(tmp_path / "root")
    for name in DATASETS:  # start from an empty catalog for these names
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    calls = []
    real_register = DatasetCatalog.register
    monkeypatch.setattr(DatasetCatalog, "remove", lambda n: calls.append(("remove", n)))
    monkeypatch.setattr(DatasetCatalog, "register",
                        lambda n, f: (calls.append(("register", n)), real_register(n, f)))
    try:
        register_synthetic_world(params)
        assert calls == [("register", n) for n in DATASETS]
        monkeypatch.undo()
        assert not (tmp_path / "root").exists()
        records = DatasetCatalog.get("synth_box_train")  # the hook generates the world once
        assert len(records) == params.num_box_train
        summary = params.world_dir() / "summary.json"
        stamp = summary.stat().st_mtime_ns
        assert len(DatasetCatalog.get("synth_pan_val")) == params.num_val
        assert summary.stat().st_mtime_ns == stamp, "generated again"
    finally:
        monkeypatch.undo()
        register_synthetic_world()


def test_nothing_written_at_import_or_registration(tmp_path):
    code = ("import dataseg, dataseg.data.synthetic as s; s.register_synthetic_world(); "
            "from detectron2.data import MetadataCatalog; "
            "print(MetadataCatalog.get('synth_pan_train').panoptic_json)")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "d2"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert out.strip().startswith(str(tmp_path / "d2" / "dataseg_synthetic"))
    assert list(tmp_path.iterdir()) == []


def test_params_from_detectron2_cfg(tmp_path):
    from detectron2.config import get_cfg

    from dataseg.config import add_dataseg_config

    cfg = add_dataseg_config(get_cfg())
    assert SyntheticWorldParams.coerce(cfg) == SyntheticWorldParams()
    cfg.DATASETS.SYNTHETIC.ROOT = str(tmp_path)
    cfg.DATASETS.SYNTHETIC.SEED = 5
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 7
    params = SyntheticWorldParams.coerce(cfg)
    assert (params.seed, params.num_val, params.resolved_root()) == (5, 7, tmp_path)
    assert params.world_dir().parent == tmp_path


def test_cli_generates_and_prints_summary(tmp_path, capsys):
    from dataseg.data.synthetic.__main__ import main

    argv = ["--root", str(tmp_path), "--seed", "1", "--image-size", "32",
            "--num-semantic-train", "2", "--num-panoptic-train", "2", "--num-box-train", "2",
            "--num-val", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "generated" in out and all(name in out for name in DATASETS)
    assert main(argv) == 0 and "(cached)" in capsys.readouterr().out
