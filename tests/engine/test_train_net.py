"""train_net.py end to end: co-training on three tasks, --eval-only through Detectron2's
evaluators, exact resume, two-process gloo training, vocabulary swap, clear errors."""
import json
import os
import subprocess
import sys

import pytest
import torch
from engine_helpers import QUICKSTART, REPO, TEST_SETS, all_finite, tiny_opts, train_until

import dataseg  # noqa: F401
from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine import (
    AtomicCheckpointer,
    CheckpointMismatchError,
    ConfigError,
    DaTaSegTrainer,
    build_cfg,
)

pytestmark = pytest.mark.slow


def run_train_net(args, env=None):
    """Runs train_net.py as users do and returns its combined output."""
    env = dict(os.environ, DATASEG_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, str(REPO / "train_net.py")] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def tiny_cfg(tmp, out, **kw):
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, out, **kw))
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Co-trains 4 iterations on the semantic, panoptic and box-only datasets via train_net.py."""
    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "train"
    log = run_train_net(["--config-file", QUICKSTART] + tiny_opts(tmp, out, max_iter=4))
    return tmp, out, log


def test_cotraining_then_eval_only_computes_every_metric(trained):
    tmp, out, log = trained
    assert (out / "model_final.pth").is_file()
    # All three tasks were trained on: their losses appear in the metrics log.
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    keys = set().union(*metrics)
    assert {"loss_ce", "loss_focal", "loss_dice", "loss_proj"} <= keys, keys

    eval_out = tmp / "eval"
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    log = run_train_net(["--config-file", QUICKSTART, "--eval-only"]
                        + tiny_opts(tmp, eval_out) + weights)
    assert "Evaluation summary" in log
    summary = json.loads((eval_out / "eval_summary.json").read_text())
    rows = summary["rows"]
    expected = {("synth_sem_val", "sem_seg/mIoU"), ("synth_pan_val", "panoptic_seg/PQ"),
                ("synth_sem_panoptic_val", "panoptic_seg/PQ"),
                ("synth_box_val_instance", "segm/AP"), ("synth_box_val_instance", "bbox/AP"),
                ("synth_unseen_sem_val", "sem_seg/mIoU")}
    assert expected <= {(r["dataset"], r["metric"]) for r in rows}, rows
    assert all_finite(rows), rows
    assert set(summary["results"]) == set(TEST_SETS)


def _train(cfg, resume=False, stop_at=None):
    return train_until(cfg, resume=resume, stop_at=stop_at)[1]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    """Stopped after 4 of 6 iterations (last checkpoint after 3), resumed: same weights as 6 in
    a row.

    Exact because the checkpoint restores model, optimizer, scheduler, iteration and the RNG
    states, and the multi-dataset sampler is fast-forwarded to the resumed iteration.
    """
    opts = dict(max_iter=6, test=(), **{"SOLVER.CHECKPOINT_PERIOD": 3,
                                        "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR"})
    cfg_a = tiny_cfg(tmp_path, tmp_path / "interrupted", **opts)
    _train(cfg_a, stop_at=3)  # iterations 0-3 run, model_0000002 written after 2, then stops
    assert (tmp_path / "interrupted" / "model_0000002.pth").is_file()
    assert not (tmp_path / "interrupted" / "model_final.pth").exists()
    resumed = _train(cfg_a, resume=True)

    cfg_b = tiny_cfg(tmp_path, tmp_path / "straight", **opts)
    straight = _train(cfg_b)
    assert resumed.keys() == straight.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)
    # and training did change the weights (the comparison is not vacuous)
    cfg_c = tiny_cfg(tmp_path, tmp_path / "short", **dict(opts, max_iter=1))
    one_step = _train(cfg_c)
    assert any(not torch.allclose(one_step[k], straight[k]) for k in straight
               if straight[k].is_floating_point())


def test_two_process_gloo_training_ends_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    run_train_net(["--config-file", QUICKSTART, "--num-gpus", "2"]
                  + tiny_opts(tmp_path, out, max_iter=3, test=(), batch=2),
                  env={"DATASEG_DIST_BACKEND": "gloo"})
    checksums = json.loads((out / "rank_weight_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums


def test_checkpoint_evaluates_with_another_vocabulary(trained, tmp_path):
    """A checkpoint is vocabulary-free: evaluate it on a dataset whose names it never saw."""
    from detectron2.data import DatasetCatalog

    from dataseg.data.register import register_semantic_dataset

    tmp, out, _ = trained
    cfg = tiny_cfg(tmp, tmp_path / "vocab", test=("synth_sem_val",))
    record = DatasetCatalog.get("synth_sem_val")[0]
    names = [[f"thing {i}", f"object {i}"] for i in range(13)]
    register_semantic_dataset("test_renamed_sem_val", os.path.dirname(record["file_name"]),
                              os.path.dirname(record["sem_seg_file_name"]), names, replace=True)
    cfg.defrost()
    cfg.DATASETS.TEST = ("test_renamed_sem_val",)
    model = DaTaSegTrainer.build_model(cfg)
    AtomicCheckpointer(model).load(str(out / "model_final.pth"))
    model.eval()
    loader = DaTaSegTrainer.build_test_loader(cfg, "test_renamed_sem_val")
    with torch.no_grad():
        pred = model(next(iter(loader)))[0]["sem_seg"]
    assert pred.shape[0] == 13
    results = DaTaSegTrainer.test(cfg, model)
    assert torch.isfinite(torch.tensor(results["test_renamed_sem_val"]["sem_seg"]["mIoU"]))


def test_clear_errors(tmp_path, trained):
    tmp, out, _ = trained
    with pytest.raises(ConfigError, match=r"'synth_sem_trian' is not registered.*synth_sem_train"):
        from dataseg.engine.defaults import check_datasets

        check_datasets(build_cfg(QUICKSTART, ["DATASETS.TRAIN", "('synth_sem_trian',)"]))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f"_BASE_: {QUICKSTART}\nMODEL:\n  DATASEG:\n    NUM_QUERIES: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*NUM_QUERIES"):
        build_cfg(str(bad_yaml))
    # a checkpoint of another architecture (hidden dim 32) into a hidden-dim-48 model
    cfg = tiny_cfg(tmp, tmp_path / "mismatch", **{"MODEL.DATASEG.HIDDEN_DIM": 48})
    model = DaTaSegTrainer.build_model(cfg)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        AtomicCheckpointer(model).load(str(out / "model_final.pth"))
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        AtomicCheckpointer(model).load(str(tmp_path / "no_such.pth"))


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0001")
    good = (tmp_path / "model_0001.pth").read_bytes()

    def crash(obj, f, *a, **k):
        with open(f, "wb") as fh:  # a save that dies half-way through
            fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0001")
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_0002")
    assert (tmp_path / "model_0001.pth").read_bytes() == good
    assert not (tmp_path / "model_0002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0001.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0001.pth"]
