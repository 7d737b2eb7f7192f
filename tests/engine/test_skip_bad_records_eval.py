"""DATASETS.SKIP_BAD_RECORDS in evaluation: a corrupt image and a label of the wrong size are
left out (not replaced by other images) with a count, and evaluation finishes."""
import logging

import numpy as np
import pytest
from engine_helpers import QUICKSTART, tiny_opts, write_random_semantic
from PIL import Image

from dataseg.data.build import build_test_loader
from dataseg.data.loading import DatasetFormatError
from dataseg.data.register import register_semantic_dataset, unregister_dataset
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


def _cfg(tmp, skip):
    return build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "out", train=("skip_sem_val",),
                                           test=("skip_sem_val",),
                                           **{"DATASETS.SKIP_BAD_RECORDS": skip}))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


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
    collect = _Collect()
    logging.getLogger("dataseg.data.build").addHandler(collect)
    try:
        results = DaTaSegTrainer.test(cfg, model)
    finally:
        logging.getLogger("dataseg.data.build").removeHandler(collect)
    assert np.isfinite(results["skip_sem_val"]["sem_seg"]["mIoU"])
    assert any("dataset 'skip_sem_val': skipped 2 bad records of 5 in evaluation" in m
               for m in collect.messages), collect.messages
