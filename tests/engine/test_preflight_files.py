"""Issue 25: the pre-flight check reads what is cheap to read (file presence, header sizes)
and stops a run before iteration 0 with one line naming the file and the record: an image
listed in a COCO json but missing on disk, a label PNG of another size than its image."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from engine_helpers import QUICKSTART, REPO, tiny_opts
from PIL import Image

from dataseg.data.synthetic.layout import SPLITS, split_paths
from dataseg.engine import PreflightError, build_cfg
from dataseg.engine.defaults import setup_datasets
from dataseg.engine.preflight import check_record_files, preflight


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Copies of the tiny world's instance and semantic val sets, each with one fault, and a
    datasets YAML declaring them."""
    from dataseg.data.synthetic import ensure_generated

    tmp = tmp_path_factory.mktemp("preflight")
    world = ensure_generated(build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "unused")))
    paths = {s.split: split_paths(world, s) for s in SPLITS}
    box, sem = paths["box_val"], paths["sem_val"]
    shutil.copytree(box.image_root, tmp / "coco" / "images")
    coco = json.loads(box.json_file.read_text())
    (tmp / "coco" / "instances.json").write_text(json.dumps(coco))
    gone = coco["images"][1]
    os.unlink(tmp / "coco" / "images" / gone["file_name"])
    shutil.copytree(sem.image_root, tmp / "sem" / "images")
    shutil.copytree(sem.sem_seg_root, tmp / "sem" / "labels")
    label = sorted((tmp / "sem" / "labels").iterdir())[2]
    with Image.open(label) as im:
        im.resize((im.width + 3, im.height)).save(label)
    (tmp / "datasets.yaml").write_text(
        "- {name: pf_coco_val, task: instance, image_root: coco/images, "
        "json_file: coco/instances.json}\n"
        "- {name: pf_sem_val, task: semantic, image_root: sem/images, sem_seg_root: sem/labels, "
        f"class_names: {json.dumps(list(map(str, range(20))))}}}\n")
    return {"tmp": tmp, "gone": tmp / "coco" / "images" / gone["file_name"],
            "gone_id": gone["id"], "label": label, "yaml": tmp / "datasets.yaml"}


def _cfg(broken, test, **overrides):
    tmp = broken["tmp"]
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "out", train=("synth_sem_train",),
                                          test=test, **overrides)
                    + ["DATASETS.REGISTER", f"('{broken['yaml']}',)"])
    setup_datasets(cfg)
    return cfg


def test_missing_coco_image_is_one_line_naming_file_and_record(broken):
    with pytest.raises(PreflightError) as e:
        preflight(_cfg(broken, ("pf_coco_val",)), keys=("TEST",))
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith("pre-flight check of DATASETS.TEST 'pf_coco_val' failed: record 1 "
                          f"(image_id {broken['gone_id']}): image file not found: "
                          f"{broken['gone']}"), msg


def test_label_of_another_size_is_one_line_naming_both_files(broken):
    with pytest.raises(PreflightError) as e:
        preflight(_cfg(broken, ("pf_sem_val",)), keys=("TEST",))
    msg = str(e.value)
    with Image.open(broken["label"]) as im:
        w, h = im.size
    assert "\n" not in msg and "record 2 " in msg, msg
    assert f"semantic label {broken['label']} is {h}x{w} but its image " in msg, msg
    assert f"is {h}x{w - 3} (height x width)" in msg, msg


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_skip_bad_records_warns_instead(broken):
    cfg = _cfg(broken, ("pf_sem_val",), **{"DATASETS.SKIP_BAD_RECORDS": True})
    # a handler of its own: another test's Detectron2 setup_logger may have stopped "dataseg"
    # from propagating to caplog's
    collect, log = _Collect(), logging.getLogger("dataseg.data.file_checks")
    log.addHandler(collect)
    try:
        preflight(cfg, keys=("TEST",))
    finally:
        log.removeHandler(collect)
    assert any("1 of 3 checked records" in m and str(broken["label"]) in m
               for m in collect.messages), collect.messages


def test_large_datasets_are_checked_on_a_stated_sample(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 6)).save(image)
    records = [{"file_name": str(image), "height": 6, "width": 8} for _ in range(10)]
    records[3] = {"file_name": str(tmp_path / "missing.png")}
    records[4] = {"file_name": str(tmp_path / "missing2.png")}
    assert check_record_files(records) == (
        f"record 3: image file not found: {tmp_path / 'missing.png'}", 2, 10)
    # an even sample of 5 of the 10: records 0, 2, 4, 6, 8
    assert check_record_files(records, max_records=5) == (
        f"record 4: image file not found: {tmp_path / 'missing2.png'}", 1, 5)
    records[4] = records[0]
    assert check_record_files(records, max_records=5) == (None, 0, 5)


def test_train_net_stops_before_iteration_0(broken, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, DATASEG_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", QUICKSTART, "--datasets",
         str(broken["yaml"])] + tiny_opts(broken["tmp"], out, train=("synth_sem_train",),
                                          test=("pf_coco_val",)),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: pre-flight check of DATASETS.TEST "
                           "'pf_coco_val' failed: record 1 ") and str(broken["gone"]) in last
    assert not (out / "metrics.json").exists()  # no iteration ran
