"""One-line errors naming the file for a missing config and unusable weights (never advising
weights_only=False); stale checkpoint temp files removed; flags before or after overrides;
--skip-preflight."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
from engine_helpers import QUICKSTART, REPO

from dataseg.engine import (
    AtomicCheckpointer,
    CheckpointNotFoundError,
    CheckpointReadError,
    ConfigError,
    build_cfg,
    parse_args,
)


def _train_net(args):
    env = dict(os.environ, DATASEG_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "train_net.py")] + args, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def files(tmp_path):
    model = torch.nn.Linear(3, 2)
    AtomicCheckpointer(model, save_dir=str(tmp_path)).save("good")
    good = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"model": "not weights"}, tmp_path / "nomodel.pth")
    torch.save({"model": {}, "obj": argparse.Namespace(a=1)}, tmp_path / "object.pth")
    return tmp_path, model


@pytest.mark.parametrize("name,reason", [
    ("random.pth", "not a PyTorch checkpoint"),
    ("truncated.pth", "truncated or corrupt PyTorch checkpoint"),
    ("empty.pth", "the file is empty"),
    ("list.pth", "not a checkpoint"),
    ("nomodel.pth", "not a checkpoint"),
    ("object.pth", "holds Python objects other than tensors"),
])
def test_unusable_weights_file_is_a_one_line_error_naming_it(files, name, reason):
    tmp, model = files
    with pytest.raises(CheckpointReadError) as err:
        AtomicCheckpointer(model).load(str(tmp / name))
    msg = str(err.value)
    assert msg.startswith(f"cannot load weights file {tmp / name}: ") and reason in msg, msg
    assert "\n" not in msg and "weights_only" not in msg
    assert err.value.__cause__ is None  # no chained 13-frame unpickling traceback
    with pytest.raises(CheckpointNotFoundError, match="no_such.pth"):
        AtomicCheckpointer(model).load(str(tmp / "no_such.pth"))
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for callers
        AtomicCheckpointer(model).load(str(tmp / "no_such.pth"))


@pytest.mark.slow
def test_train_net_one_line_errors(tmp_path):
    proc = _train_net(["--config-file", str(tmp_path / "nope.yaml")])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train_net.py: config error: config file not found: {tmp_path / 'nope.yaml'}")
    with pytest.raises(ConfigError, match="config file not found"):
        build_cfg(str(tmp_path / "nope.yaml"))

    weights = tmp_path / "random.pth"
    weights.write_bytes(os.urandom(2048))
    proc = _train_net(["--config-file", QUICKSTART, "--eval-only", "--skip-preflight",
                       "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "out"),
                       "DATASETS.TEST", "()", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
                       "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_net.py: error: cannot load weights file {weights}: "), last
    assert "weights_only" not in proc.stderr


def test_stale_checkpoint_temp_files_are_removed_at_the_next_save(tmp_path):
    stale = tmp_path / ".model_0000009.pth.k2j3h4.tmp"  # left by a save killed mid-write
    stale.write_bytes(b"partial")
    other = tmp_path / "notes.tmp"
    other.write_bytes(b"not ours")
    AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path)).save("model_0000010")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "model_0000010.pth").is_file()


def test_stale_temp_files_are_removed_at_start(tmp_path):
    from dataseg.engine.defaults import _remove_stale_temp_files

    stale = tmp_path / ".model_final.pth.abc.tmp"
    stale.write_bytes(b"partial")
    _remove_stale_temp_files(str(tmp_path))
    assert not stale.exists()


def test_flags_before_or_after_overrides():
    expected = parse_args(["--config-file", "c.yaml", "--resume", "--num-gpus", "2",
                           "--datasets", "d.yaml", "SOLVER.MAX_ITER", "10"])
    for argv in (["--config-file", "c.yaml", "SOLVER.MAX_ITER", "10", "--resume",
                  "--num-gpus", "2", "--datasets", "d.yaml"],
                 ["SOLVER.MAX_ITER", "10", "--num-gpus=2", "--resume", "--config-file",
                  "c.yaml", "--datasets", "d.yaml"]):
        args = parse_args(argv)
        assert vars(args) == vars(expected), argv
    assert expected.opts == ["SOLVER.MAX_ITER", "10"] and expected.resume


def test_unknown_flag_among_overrides_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config-file", "c.yaml", "SOLVER.MAX_ITER", "10", "--resum"])
    err = capsys.readouterr().err
    assert "unknown option --resum among the config overrides" in err and "--resume" in err


def test_config_saved_before_a_key_was_removed_still_loads(tmp_path):
    # SOLVER.POLY_LR_CONSTANT_ENDING was read by nothing and is gone; a config.yaml dumped by an
    # earlier run still names it and must load (ignored), while a truly unknown key still fails.
    cfg = build_cfg()
    assert "POLY_LR_CONSTANT_ENDING" not in cfg.SOLVER
    old = tmp_path / "old_run_config.yaml"
    old.write_text(cfg.dump().replace("  POLY_LR_POWER: 0.9",
                                      "  POLY_LR_CONSTANT_ENDING: 0.0\n  POLY_LR_POWER: 0.5"))
    loaded = build_cfg(str(old))
    assert loaded.SOLVER.POLY_LR_POWER == 0.5 and "POLY_LR_CONSTANT_ENDING" not in loaded.SOLVER
    bad = tmp_path / "typo.yaml"
    bad.write_text("SOLVER:\n  POLY_LR_POWR: 0.5\n")
    with pytest.raises(ConfigError, match="typo.yaml.*POLY_LR_POWR"):
        build_cfg(str(bad))
