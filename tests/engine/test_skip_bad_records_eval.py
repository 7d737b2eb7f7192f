"""DATASETS.SKIP_BAD_RECORDS in evaluation: a corrupt image and a label of the wrong size are
left out (not replaced by other images) with a count, and evaluation finishes (semantic and
panoptic)."""
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import QUICKSTART, tiny_opts, write_random_semantic
from PIL import Image

from dataseg.data.build import build_test_loader
from dataseg.data.loading import DatasetFormatError
from dataseg.data.register import (
    register_panoptic_dataset,
    register_semantic_dataset,
    unregister_dataset,
)
from dataseg.engine import DaTaSegTrainer, build_cfg

NAMES = ["wall", "floor", "sky", "tree"]


@pytest.fixture
def broken_semantic(tmp_path):
    write_random_semantic(tmp_path, 5, num_classes=4)
    (tmp_path / "img" / "1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # corrupt image
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "lbl" / "3.png")  # wrong size
    register_semantic_dataset("skip_sem_val", str(tmp_path / "img"), str(tmp_path / "lbl"),
                              NAMES, replace=True)
    yield tmp_path
    unregister_dataset("skip_sem_val")


def _cfg(tmp, skip, name="skip_sem_val", out="out"):
    return build_cfg(QUICKSTART, tiny_opts(tmp, tmp / out, train=(name,), test=(name,),
                                           **{"DATASETS.SKIP_BAD_RECORDS": skip}))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _test_and_log(cfg, model, logger_name):
    """DaTaSegTrainer.test's results and the messages logged to ``logger_name`` meanwhile."""
    collect = _Collect()
    logging.getLogger(logger_name).addHandler(collect)
    try:
        return DaTaSegTrainer.test(cfg, model), collect.messages
    finally:
        logging.getLogger(logger_name).removeHandler(collect)


def test_evaluation_skips_bad_records_with_a_count(broken_semantic):
    tmp = broken_semantic
    with pytest.raises(DatasetFormatError, match="1.jpg"):
        list(build_test_loader(_cfg(tmp, False), "skip_sem_val"))

    cfg = _cfg(tmp, True)
    loader = build_test_loader(cfg, "skip_sem_val")
    files = [b[0]["file_name"] for b in loader]
    assert sorted(f.rsplit("/", 1)[1] for f in files) == ["0.jpg", "2.jpg", "4.jpg"]
    assert loader.num_skipped == 2  # left out, no image seen twice

    model = DaTaSegTrainer.build_model(cfg)
    model.eval()
    results, messages = _test_and_log(cfg, model, "dataseg.data.build")
    assert np.isfinite(results["skip_sem_val"]["sem_seg"]["mIoU"])
    assert any("dataset 'skip_sem_val': skipped 2 bad records of 5 in evaluation" in m
               for m in messages), messages


@pytest.fixture
def broken_panoptic(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from data_fixtures import write_panoptic_dataset

    ds = write_panoptic_dataset(tmp_path / "pan", n=5)
    (Path(ds["panoptic_root"]) / "000001.png").unlink()  # skipped when the records load
    (Path(ds["image_root"]) / "000003.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # by the mapper
    register_panoptic_dataset("skip_pan_val", ds["image_root"], ds["panoptic_root"],
                              ds["panoptic_json"], ds["categories"], replace=True)
    yield tmp_path
    unregister_dataset("skip_pan_val")


def test_panoptic_evaluation_over_loaded_images_with_skipped_count(broken_panoptic):
    # LoadedImagesPanopticEvaluator: with SKIP_BAD_RECORDS, Detectron2's COCOPanopticEvaluator
    # stopped at the first ground-truth image without a prediction (a skipped record); it now
    # scores the images that loaded and reports how many were skipped
    tmp = broken_panoptic
    cfg = _cfg(tmp, True, "skip_pan_val")
    model = DaTaSegTrainer.build_model(cfg)
    model.eval()
    results, messages = _test_and_log(cfg, model, "dataseg")
    res = results["skip_pan_val"]
    assert np.isfinite(res["panoptic_seg"]["PQ"])
    assert res["images"] == {"evaluated": 3, "skipped": 2, "total": 5}
    assert any("dataset 'skip_pan_val': panoptic evaluation over 3 of 5 images, 2 skipped as "
               "bad records" in m for m in messages), messages
    summary = json.loads((tmp / "out" / "eval_summary.json").read_text())
    assert summary["results"]["skip_pan_val"]["images"]["skipped"] == 2
    md = (tmp / "out" / "eval_summary.md").read_text()
    assert "skip_pan_val: evaluated 3 of 5 images (2 skipped as bad records)" in md
    # without skipping, the bad record still stops evaluation with a clear error
    with pytest.raises(DatasetFormatError, match="000001.png"):
        DaTaSegTrainer.test(_cfg(tmp, False, "skip_pan_val", out="out2"), model)
