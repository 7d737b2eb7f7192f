"""Loaders end to end: Detectron2's own train loader per dataset, the multi-dataset loader
(one dataset per batch, mapped by that dataset's mapper) and the test loader."""
import itertools
import logging

import pytest
from data_fixtures import (
    write_box_dataset,
    write_instance_dataset,
    write_panoptic_dataset,
    write_semantic_dataset,
)
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader

from dataseg.data.build import build_multi_dataset_train_loader, build_test_loader
from dataseg.data.mappers import build_train_mapper
from dataseg.data.register import (
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)


@pytest.fixture
def four(tmp_path, names):
    s = write_semantic_dataset(tmp_path / "sem", n=3)
    p = write_panoptic_dataset(tmp_path / "pan", n=2)
    i = write_instance_dataset(tmp_path / "inst", n=2)
    b = write_box_dataset(tmp_path / "box", n=3)
    register_semantic_dataset("b_sem", s["image_root"], s["sem_seg_root"], s["class_names"])
    register_panoptic_dataset("b_pan", p["image_root"], p["panoptic_root"], p["panoptic_json"],
                              p["categories"])
    register_instance_dataset("b_inst", i["image_root"], i["json_file"], i["categories"])
    register_box_dataset("b_box", b["image_root"], b["json_file"], b["categories"])
    names.extend(["b_sem", "b_pan", "b_inst", "b_box"])
    return {"b_sem": "semantic", "b_pan": "panoptic", "b_inst": "instance", "b_box": "box"}


def _small(cfg):
    cfg.INPUT.LSJ.IMAGE_SIZE = 32
    cfg.INPUT.RESIZE_CROP.MIN_SIZE_TRAIN = [24, 32]
    cfg.INPUT.RESIZE_CROP.MAX_SIZE_TRAIN = 64
    cfg.INPUT.RESIZE_CROP.CROP_SIZE = 32
    return cfg


@pytest.mark.parametrize("name", ["b_sem", "b_pan", "b_inst", "b_box"])
def test_detectron2_train_loader_single_dataset(cfg, four, name):
    cfg = _small(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 2
    loader = build_detection_train_loader(cfg, mapper=build_train_mapper(cfg, name))
    batch = next(iter(loader))
    assert len(batch) == 2
    for x in batch:
        assert x["dataset_name"] == name and x["task"] == four[name]
        assert x["image"].shape[1:] == x["instances"].image_size
        assert x["instances"].has("gt_masks") == (four[name] != "box")


def test_multi_dataset_loader(cfg, four):
    cfg = _small(cfg)
    cfg.DATASETS.TRAIN = tuple(four)
    cfg.DATASETS.TRAIN_RATIOS = [1.0, 1.0, 1.0, 1.0]
    cfg.DATASETS.TRAIN_BATCH_SIZES = [2, 0, 3, 4]
    cfg.SOLVER.IMS_PER_BATCH = 1
    loader = build_multi_dataset_train_loader(cfg)
    seen = set()
    for batch in itertools.islice(loader, 16):
        name = batch[0]["dataset_name"]
        assert all(x["dataset_name"] == name and x["task"] == four[name] for x in batch)
        assert len(batch) == {"b_sem": 2, "b_pan": 1, "b_inst": 3, "b_box": 4}[name]
        if four[name] == "semantic":
            assert all(x["sem_seg"].shape == x["image"].shape[1:] for x in batch)
        seen.add(name)
    assert len(seen) >= 3
    cfg.DATASETS.TRAIN_RATIOS = [1.0]
    with pytest.raises(ValueError, match="TRAIN_RATIOS has 1 entries"):
        build_multi_dataset_train_loader(cfg)


def test_multi_dataset_loader_with_workers(cfg, four):
    cfg = _small(cfg)
    cfg.DATASETS.TRAIN = ("b_sem", "b_box")
    cfg.DATALOADER.NUM_WORKERS = 1
    cfg.SOLVER.IMS_PER_BATCH = 2
    batches = list(itertools.islice(build_multi_dataset_train_loader(cfg), 4))
    assert all(len({x["dataset_name"] for x in b}) == 1 for b in batches)


def test_skip_bad_records_through_loader(tmp_path, cfg, four, caplog):
    import os

    from detectron2.data import DatasetCatalog
    rec = DatasetCatalog.get("b_box")[1]
    os.remove(rec["file_name"])
    cfg = _small(cfg)
    cfg.DATASETS.TRAIN = ("b_box",)
    cfg.SOLVER.IMS_PER_BATCH = 3
    with pytest.raises(Exception, match=os.path.basename(rec["file_name"])):
        for _ in itertools.islice(build_multi_dataset_train_loader(cfg), 4):
            pass
    cfg.DATASETS.SKIP_BAD_RECORDS = True
    with caplog.at_level(logging.WARNING):
        for batch in itertools.islice(build_multi_dataset_train_loader(cfg), 4):
            assert all(x["file_name"] != rec["file_name"] for x in batch)
    assert "skipped bad record" in caplog.text


def test_test_loader(cfg, four):
    loader = build_test_loader(cfg, "b_pan")
    items = [b[0] for b in loader]
    assert len(items) == 2 and all(x["task"] == "panoptic" for x in items)


def test_dataset_name_is_the_mappers_not_restamped_on_records(cfg, four, names):
    # A dataset registered straight with Detectron2 has records without "dataset_name": the
    # loaders leave them as they are and the model inputs still name the dataset (the mapper's).
    plain = [{k: v for k, v in r.items() if k != "dataset_name"}
             for r in DatasetCatalog.get("b_sem")]
    DatasetCatalog.register("b_plain", lambda: plain)
    MetadataCatalog.get("b_plain").set(**{k: v for k, v in MetadataCatalog.get("b_sem").as_dict()
                                          .items() if k != "name"})
    names.append("b_plain")
    cfg = _small(cfg)
    cfg.DATASETS.TRAIN = ("b_plain",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    batch = next(iter(build_multi_dataset_train_loader(cfg)))
    assert len(batch) == 2 and all(x["dataset_name"] == "b_plain" for x in batch)
    items = [b[0] for b in build_test_loader(cfg, "b_plain")]
    assert len(items) == 3 and all(x["dataset_name"] == "b_plain" for x in items)
    assert all("dataset_name" not in r for r in plain)  # nothing stamped on the records
