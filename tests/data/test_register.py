"""Registration + loaders on tiny datasets in the real formats, and their bad-input errors."""
import json
import logging
import pickle

import numpy as np
import pytest
from data_fixtures import (
    write_box_dataset,
    write_instance_dataset,
    write_panoptic_dataset,
    write_semantic_dataset,
)
from detectron2.data import DatasetCatalog, DatasetFromList, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator

from dataseg.data.dataset_info import get_dataset_info
from dataseg.data.loading import (
    DatasetFormatError,
    load_semantic_dicts,
    skip_bad_records,
    skipping_bad_records,
)
from dataseg.data.register import (
    register_box_dataset,
    register_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
    unregister_dataset,
)


def test_semantic_registration_and_records(tmp_path, names):
    ds = write_semantic_dataset(tmp_path, n=3)
    names.append("t_sem")
    register_semantic_dataset("t_sem", ds["image_root"], ds["sem_seg_root"], ds["class_names"])
    info = get_dataset_info("t_sem")
    assert info.task == "semantic" and info.class_synonyms[0] == ["c0", "class zero"]
    assert info.is_thing == [False] * 4
    meta = MetadataCatalog.get("t_sem")
    assert meta.stuff_classes == ["c0", "c1", "c2", "c3"] and meta.augmentation == "resize_crop"
    recs = DatasetCatalog.get("t_sem")
    assert [r["image_id"] for r in recs] == sorted(ds["labels"])
    assert all(r["dataset_name"] == "t_sem" and r["sem_seg_file_name"].endswith(".png")
               for r in recs)
    ev = SemSegEvaluator("t_sem", distributed=False)  # reads stuff_classes/ignore/records
    assert ev._num_classes == 4


def test_registration_is_lazy_and_names_unique(tmp_path, names):
    names.append("t_lazy")
    register_box_dataset("t_lazy", tmp_path / "nope", tmp_path / "nope.json",
                         [{"id": 1, "name": "a"}])
    with pytest.raises(ValueError, match="already registered"):
        register_box_dataset("t_lazy", tmp_path, tmp_path / "x.json", [{"id": 1, "name": "a"}])
    register_box_dataset("t_lazy", tmp_path, tmp_path / "x.json", [{"id": 2, "name": "b"}],
                         replace=True)
    assert MetadataCatalog.get("t_lazy").thing_classes == ["b"]
    with pytest.raises(DatasetFormatError, match="x.json"):
        DatasetCatalog.get("t_lazy")


def test_unregister_dataset_is_public_api(tmp_path, names):
    # users re-registering a name of their own: unregister_dataset removes both catalog entries
    # (absent names are no error), after which the name registers again without replace=True
    names.append("t_unreg")
    register_box_dataset("t_unreg", tmp_path, tmp_path / "x.json", [{"id": 1, "name": "a"}])
    unregister_dataset("t_unreg")
    assert "t_unreg" not in DatasetCatalog.list() and "t_unreg" not in MetadataCatalog.list()
    unregister_dataset("t_unreg")  # no error when absent
    register_box_dataset("t_unreg", tmp_path, tmp_path / "y.json", [{"id": 2, "name": "b"}])
    assert MetadataCatalog.get("t_unreg").json_file == str(tmp_path / "y.json")


def test_panoptic_records_and_metadata(tmp_path, names):
    ds = write_panoptic_dataset(tmp_path, n=2)
    names.append("t_pan")
    register_panoptic_dataset("t_pan", ds["image_root"], ds["panoptic_root"], ds["panoptic_json"],
                              ds["categories"], sem_seg_root=str(tmp_path / "panoptic"))
    meta = MetadataCatalog.get("t_pan")
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1}
    assert meta.stuff_dataset_id_to_contiguous_id == {1: 0, 3: 1, 17: 2, 40: 3}
    assert meta.class_synonyms[1] == ["car", "automobile"] and meta.is_thing == [1, 1, 0, 0]
    recs = DatasetCatalog.get("t_pan")
    assert len(recs) == 2 and "sem_seg_file_name" in recs[0]
    cats = [s["category_id"] for s in recs[0]["segments_info"]]
    assert cats == [2, 3, 0, 0, 1]
    assert [s["isthing"] for s in recs[0]["segments_info"]] == [False, False, True, True, True]
    COCOPanopticEvaluator("t_pan")  # reads the id maps, panoptic_json and panoptic_root


def test_instance_records(tmp_path, names):
    ds = write_instance_dataset(tmp_path, n=2)
    names.append("t_inst")
    register_instance_dataset("t_inst", ds["image_root"], ds["json_file"], ds["categories"])
    recs = DatasetCatalog.get("t_inst")
    assert [len(r["annotations"]) for r in recs] == [4, 4]
    a = recs[1]["annotations"]
    assert [x["category_id"] for x in a] == [0, 1, 2, 0] and a[3]["iscrowd"] == 1
    assert isinstance(a[1]["segmentation"], dict)  # uncompressed RLE was compressed
    assert isinstance(a[1]["segmentation"]["counts"], bytes)
    assert recs[0]["file_name"].endswith("patch0/obj_0.jpg")


def test_box_records_are_lean_and_serialize(tmp_path, names):
    ds = write_box_dataset(tmp_path, n=3, boxes_per_image=4)
    data = ds["data"]
    data["annotations"][0]["iscrowd"] = 1
    data["images"].append({"id": 99, "file_name": "empty.jpg", "height": 30, "width": 40})
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    names.append("t_box")
    register_box_dataset("t_box", ds["image_root"], ds["json_file"], ds["categories"])
    recs = DatasetCatalog.get("t_box")
    assert len(recs) == 4 and "annotations" not in recs[0]
    assert recs[0]["boxes"].dtype == np.float32 and recs[0]["box_classes"].dtype == np.int32
    assert [len(r["boxes"]) for r in recs] == [3, 4, 4, 0]  # crowd box dropped
    ids = {c["id"]: i for i, c in enumerate(ds["categories"])}
    for r in recs[:3]:
        src = [a for a in data["annotations"] if a["image_id"] == r["image_id"]
               and not a["iscrowd"]]
        want = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                          a["bbox"][1] + a["bbox"][3]] for a in src], np.float32)
        np.testing.assert_array_equal(r["boxes"], want)
        assert r["box_classes"].tolist() == [ids[a["category_id"]] for a in src]
    lst = DatasetFromList(recs, copy=False, serialize=True)
    back = lst[2]
    np.testing.assert_array_equal(back["boxes"], recs[2]["boxes"])
    assert len(pickle.dumps(back)) < 1000


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kind", ["instance", "box", "panoptic"])
def test_json_missing_key_names_file_and_key(tmp_path, names, kind):
    if kind == "panoptic":
        ds = write_panoptic_dataset(tmp_path, n=1)
        data = json.loads(open(ds["panoptic_json"]).read())
        del data["annotations"][0]["segments_info"]
        path, key = ds["panoptic_json"], "segments_info"
        reg = lambda: register_panoptic_dataset("t_bad", ds["image_root"], ds["panoptic_root"],  # noqa
                                                path, ds["categories"])
    else:
        ds = (write_instance_dataset if kind == "instance" else write_box_dataset)(tmp_path, n=1)
        data = json.loads(open(ds["json_file"]).read())
        del data["annotations"][1]["category_id"]
        path, key = ds["json_file"], "category_id"
        fn = register_instance_dataset if kind == "instance" else register_box_dataset
        reg = lambda: fn("t_bad", ds["image_root"], path, ds["categories"])  # noqa
    open(path, "w").write(json.dumps(data))
    names.append("t_bad")
    reg()
    with pytest.raises(DatasetFormatError) as e:
        DatasetCatalog.get("t_bad")
    assert path in str(e.value) and f"'{key}'" in str(e.value)


def test_top_level_key_missing(tmp_path, names):
    ds = write_box_dataset(tmp_path, n=1, write_images=False)
    open(ds["json_file"], "w").write(json.dumps({"annotations": []}))
    names.append("t_bad")
    register_box_dataset("t_bad", ds["image_root"], ds["json_file"], ds["categories"])
    with pytest.raises(DatasetFormatError, match="top level has no key 'images'"):
        DatasetCatalog.get("t_bad")


@pytest.mark.parametrize("kind", ["instance", "box", "panoptic"])
def test_unknown_category_names_file_image_annotation(tmp_path, names, kind):
    names.append("t_bad")
    if kind == "panoptic":
        ds = write_panoptic_dataset(tmp_path, n=1)
        register_panoptic_dataset("t_bad", ds["image_root"], ds["panoptic_root"],
                                  ds["panoptic_json"], ds["categories"][:3])  # no grass (40)
        path, image_id, ann = ds["panoptic_json"], 1, "segment id 1301"
    else:
        ds = (write_instance_dataset if kind == "instance" else write_box_dataset)(tmp_path, n=1)
        data = json.loads(open(ds["json_file"]).read())
        data["annotations"][1]["category_id"] = 777
        ann_id, image_id = data["annotations"][1]["id"], data["annotations"][1]["image_id"]
        open(ds["json_file"], "w").write(json.dumps(data))
        fn = register_instance_dataset if kind == "instance" else register_box_dataset
        fn("t_bad", ds["image_root"], ds["json_file"], ds["categories"])
        path, ann = ds["json_file"], f"annotation {ann_id}"
    with pytest.raises(DatasetFormatError) as e:
        DatasetCatalog.get("t_bad")
    msg = str(e.value)
    assert path in msg and f"image {image_id}" in msg and ann in msg and "vocabulary" in msg


def test_missing_label_file_error_and_skip(tmp_path, names, caplog):
    ds = write_semantic_dataset(tmp_path, n=3)
    missing = tmp_path / "labels" / "img_001.png"
    missing.unlink()
    names.append("t_sem_bad")
    register_semantic_dataset("t_sem_bad", ds["image_root"], ds["sem_seg_root"],
                              ds["class_names"])
    with pytest.raises(DatasetFormatError, match=str(missing)):
        DatasetCatalog.get("t_sem_bad")
    with skipping_bad_records(), caplog.at_level(logging.WARNING):
        recs = DatasetCatalog.get("t_sem_bad")
        with skipping_bad_records(False), pytest.raises(DatasetFormatError):
            DatasetCatalog.get("t_sem_bad")  # a nested strict scope
        assert skip_bad_records()  # restored on leaving the nested scope, even by an exception
    assert [r["image_id"] for r in recs] == ["img_000", "img_002"]
    assert "skipped 1 bad records" in caplog.text
    assert not skip_bad_records()  # the scope ended: strict again, nothing to reset by hand
    with pytest.raises(DatasetFormatError, match=str(missing)):
        DatasetCatalog.get("t_sem_bad")


def test_missing_panoptic_png_named(tmp_path, names):
    ds = write_panoptic_dataset(tmp_path, n=2)
    (tmp_path / "panoptic" / "000001.png").unlink()
    names.append("t_pan_bad")
    register_panoptic_dataset("t_pan_bad", ds["image_root"], ds["panoptic_root"],
                              ds["panoptic_json"], ds["categories"])
    with pytest.raises(DatasetFormatError, match="000001.png"):
        DatasetCatalog.get("t_pan_bad")


def test_bad_categories_rejected(names):
    with pytest.raises(ValueError, match=r"categories\[1\] has no key 'name'"):
        register_box_dataset("t_x", "/a", "/b.json", [{"id": 1, "name": "a"}, {"id": 2}])
    with pytest.raises(ValueError, match="appears twice"):
        register_box_dataset("t_x", "/a", "/b.json", [{"id": 1, "name": "a"},
                                                      {"id": 1, "name": "b"}])
    assert "t_x" not in DatasetCatalog.list()


def test_one_registration_core_with_before_load(tmp_path, names):
    # every register_* goes through register_dataset; before_load runs before each load (the
    # "generate the files if missing" step), and a rejected call changes no catalog entry
    ds = write_box_dataset(tmp_path, n=2)
    calls = []
    names.append("t_hook")
    register_box_dataset("t_hook", ds["image_root"], ds["json_file"], ds["categories"],
                         before_load=lambda: calls.append("box"))
    assert calls == []  # nothing runs at registration
    assert len(DatasetCatalog.get("t_hook")) == 2 and calls == ["box"]
    with pytest.raises(ValueError, match="t_hook.*augmentation 'jitter'"):
        register_box_dataset("t_hook", ds["image_root"], ds["json_file"], ds["categories"],
                             augmentation="jitter", replace=True)
    assert get_dataset_info("t_hook").augmentation == "lsj"  # the old entry is still there

    sem = write_semantic_dataset(tmp_path / "sem", n=1)

    def generate():  # e.g. write the label files on first use
        calls.append("sem")

    names.append("t_core")
    register_dataset("t_core", "semantic",
                     lambda: load_semantic_dicts("t_core", sem["image_root"], sem["sem_seg_root"]),
                     [{"id": 0, "name": "a", "synonyms": [], "isthing": 0}],
                     evaluator_type="sem_seg", augmentation="none", before_load=generate,
                     metadata={"ignore_label": 7})
    assert [r["dataset_name"] for r in DatasetCatalog.get("t_core")] == ["t_core"]
    assert calls == ["box", "sem"]
    info = get_dataset_info("t_core")
    assert (info.task, info.ignore_label, info.augmentation) == ("semantic", 7, "none")
    with pytest.raises(ValueError, match="task 'depth'"):
        register_dataset("t_core2", "depth", list, [], evaluator_type=None, augmentation="none")
    with pytest.raises(ValueError, match="evaluator_type 'lvis'"):
        register_dataset("t_core2", "box", list, [], evaluator_type="lvis", augmentation="none")
    assert "t_core2" not in DatasetCatalog.list()
