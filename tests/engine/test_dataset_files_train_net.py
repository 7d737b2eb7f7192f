"""Your own datasets in train_net.py with no Python: the quickstart's own synthetic datasets,
declared in a datasets YAML (one entry of each task), train and evaluate through train_net.py,
in one process and in two (gloo); pre-flight stops a run whose test set has a missing label
before any iteration; log.txt holds the project's own lines; --eval-only keeps the training
config.yaml; flags may follow the overrides."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from engine_helpers import QUICKSTART, REPO, tiny_opts

from dataseg.data.synthetic.layout import SPLITS, split_paths
from dataseg.data.synthetic.vocabulary import vocabulary
from dataseg.engine import build_cfg

pytestmark = pytest.mark.slow

TRAIN = ("my_sem_train", "my_pan_train", "my_box_train")
TEST = ("my_sem_val", "my_pan_val", "my_inst_val")


def train_net(args, env=None, check=True):
    env = dict(os.environ, DATASEG_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, str(REPO / "train_net.py")] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _paths(world, split):
    return split_paths(world, next(s for s in SPLITS if s.split == split))


@pytest.fixture(scope="module")
def datasets_yaml(tmp_path_factory):
    """The tiny synthetic world and a datasets YAML naming its files, with relative paths,
    a text vocabulary with synonyms, categories taken from the jsons, and an instance json
    with one mask-less annotation."""
    from dataseg.data.synthetic import ensure_generated

    tmp = tmp_path_factory.mktemp("own")
    world = ensure_generated(build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "unused")))
    rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731
    sem_vocab = vocabulary("sem")
    (tmp / "sem_classes.txt").write_text(
        "".join(" | ".join(names) + "\n" for names in sem_vocab.names))
    inst = json.loads(_paths(world, "box_val").json_file.read_text())
    maskless = next(a for a in inst["annotations"] if not a.get("iscrowd"))
    del maskless["segmentation"]
    (tmp / "instances_maskless.json").write_text(json.dumps(inst))
    sem_t, sem_v = _paths(world, "sem_train"), _paths(world, "sem_val")
    pan_t, pan_v = _paths(world, "pan_train"), _paths(world, "pan_val")
    box_t, box_v = _paths(world, "box_train"), _paths(world, "box_val")
    is_thing = json.dumps([bool(t) for t in sem_vocab.is_thing])
    text = f"""\
        - name: my_sem_train
          task: semantic
          image_root: {rel(sem_t.image_root)}
          sem_seg_root: {rel(sem_t.sem_seg_root)}
          class_names: sem_classes.txt
          is_thing: {is_thing}
        - name: my_sem_val
          task: semantic
          image_root: {rel(sem_v.image_root)}
          sem_seg_root: {rel(sem_v.sem_seg_root)}
          class_names: sem_classes.txt
          is_thing: {is_thing}
        - {{name: my_pan_train, task: panoptic, image_root: {rel(pan_t.image_root)},
            panoptic_root: {rel(pan_t.panoptic_root)}, panoptic_json: {rel(pan_t.panoptic_json)}}}
        - {{name: my_pan_val, task: panoptic, image_root: {rel(pan_v.image_root)},
            panoptic_root: {rel(pan_v.panoptic_root)}, panoptic_json: {rel(pan_v.panoptic_json)}}}
        - {{name: my_box_train, task: box, image_root: {rel(box_t.image_root)},
            json_file: {rel(box_t.json_file)}}}
        - {{name: my_inst_val, task: instance, image_root: {rel(box_v.image_root)},
            json_file: instances_maskless.json}}
        """
    path = tmp / "my_datasets.yaml"
    path.write_text(textwrap.dedent(text))
    return tmp, path


def test_datasets_yaml_trains_and_evaluates_through_train_net(datasets_yaml):
    tmp, path = datasets_yaml
    out = tmp / "run"
    # --datasets after the overrides: flags are accepted in any order
    proc = train_net(["--config-file", QUICKSTART]
                     + tiny_opts(tmp, out, max_iter=3, train=TRAIN, test=TEST)
                     + ["--datasets", str(path)])
    summary = json.loads((out / "eval_summary.json").read_text())
    assert set(summary["results"]) == set(TEST)
    metrics = {(r["dataset"], r["metric"]) for r in summary["rows"]}
    assert {("my_sem_val", "sem_seg/mIoU"), ("my_pan_val", "panoptic_seg/PQ"),
            ("my_inst_val", "segm/AP"), ("my_inst_val", "bbox/AP")} <= metrics
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert {"loss_ce", "loss_focal", "loss_dice", "loss_proj"} <= set().union(*records)
    # the base lr is logged as "lr", the backbone's (0.1x) as "lr_backbone"
    last = [r for r in records if "lr" in r][-1]
    assert last["lr_backbone"] == pytest.approx(0.1 * last["lr"])
    log = (out / "log.txt").read_text()
    for line in ("dataseg.trainer INFO: Model: DaTaSeg", "Registered 6 datasets from",
                 "Pre-flight: loaded and checked 3 datasets", "Learning rates: base",
                 "Evaluation summary:", "| my_inst_val | instance | segm/AP |",
                 "1 annotations without a mask"):
        assert line in log, line
    config = (out / "config.yaml").read_text()
    assert str(path) in config  # DATASETS.REGISTER recorded with its absolute path

    # --eval-only into the same OUTPUT_DIR, its flag after the overrides: the training
    # config.yaml stays, the evaluation's is config_eval.yaml
    proc = train_net(["--config-file", QUICKSTART, "--datasets", str(path)]
                     + tiny_opts(tmp, out, train=TRAIN, test=("my_inst_val",))
                     + ["MODEL.WEIGHTS", str(out / "model_final.pth"), "--eval-only"])
    assert (out / "config.yaml").read_text() == config
    assert "my_inst_val" in (out / "config_eval.yaml").read_text()
    assert "Evaluation summary" in proc.stdout + proc.stderr


def test_datasets_yaml_in_two_gloo_processes(datasets_yaml):
    """The spawned ranks register the file themselves (nothing is inherited with "spawn")."""
    tmp, path = datasets_yaml
    out = tmp / "ddp"
    train_net(["--config-file", QUICKSTART, "--num-gpus", "2", "--datasets", str(path)]
              + tiny_opts(tmp, out, max_iter=2, train=TRAIN, test=("my_sem_val",), batch=2),
              env={"DATASEG_DIST_BACKEND": "gloo"})
    checksums = json.loads((out / "rank_weight_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert (out / "eval_summary.json").is_file()
    assert "Registered 6 datasets" in (out / "log.txt.rank1").read_text()


def test_preflight_stops_a_run_whose_test_set_lacks_a_label(datasets_yaml):
    tmp, path = datasets_yaml
    world = tmp / "broken_val"
    text = path.read_text()
    # a copy of the semantic val set with one label file removed
    entry = [e for e in text.split("- name: ") if e.startswith("my_sem_val")][0]
    image_root = tmp / entry.split("image_root: ")[1].split("\n")[0]
    label_root = tmp / entry.split("sem_seg_root: ")[1].split("\n")[0]
    shutil.copytree(image_root, world / "images")
    shutil.copytree(label_root, world / "labels")
    missing = sorted((world / "labels").iterdir())[0]
    missing.unlink()
    broken = tmp / "broken.yaml"
    broken.write_text("- {name: my_broken_val, task: semantic, image_root: broken_val/images,"
                      " sem_seg_root: broken_val/labels, class_names: sem_classes.txt}\n")
    out = tmp / "preflight"
    proc = train_net(["--config-file", QUICKSTART, "--datasets", str(path), "--datasets",
                      str(broken)]
                     + tiny_opts(tmp, out, max_iter=2, train=TRAIN, test=("my_broken_val",)),
                     check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert err[-1].startswith("train_net.py: error: pre-flight check of DATASETS.TEST "
                              "'my_broken_val' failed"), err[-5:]
    assert str(missing) in err[-1]
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()  # no iteration ran

    # --skip-preflight: training runs, and the same error surfaces only at evaluation
    out = tmp / "no_preflight"
    proc = train_net(["--config-file", QUICKSTART, "--datasets", str(path), "--datasets",
                      str(broken), "--skip-preflight"]
                     + tiny_opts(tmp, out, max_iter=1, train=TRAIN, test=("my_broken_val",)),
                     check=False)
    assert proc.returncode != 0 and (out / "metrics.json").is_file()
    assert str(missing) in proc.stderr.strip().splitlines()[-1]
