"""tools/profile_train_step.py on a tiny config: the trainer's real step is profiled and the
table names the operators (a config override reaches the model)."""
import importlib.util

from engine_helpers import QUICKSTART, REPO, tiny_opts

spec = importlib.util.spec_from_file_location("profile_train_step",
                                              REPO / "tools" / "profile_train_step.py")
pts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pts)


def test_profiles_the_trainers_step(tmp_path, capsys):
    opts = tiny_opts(tmp_path, tmp_path / "out", test=(), **{"MODEL.DEVICE": "cpu"})
    pts.main(["--config-file", QUICKSTART, "--warmup", "1", "--steps", "2", "--rows", "5",
              "--skip-preflight", *opts])
    out = capsys.readouterr().out
    assert "2 profiled steps after 1 warm-up: median" in out
    assert "device cpu" in out
    assert "aten::" in out  # the operator table
    assert "Self CPU time total" in out
