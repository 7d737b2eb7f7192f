"""tools/eval_export.py: exports evaluated by the evaluators of ``train_net.py --eval-only``
(Detectron2's test loaders, the project's evaluator table) give the eager model's metrics,
and an int8 export is evaluated beside them."""
import importlib.util
import json
import math

import pytest
from engine_helpers import QUICKSTART, REPO, tiny_opts

import dataseg  # noqa: F401


def _tool():
    spec = importlib.util.spec_from_file_location("dataseg_eval_export",
                                                  REPO / "tools" / "eval_export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("synth_"):
            rows[(cells[0], cells[1])] = [float(c) for c in cells[2:]]
    return rows


def test_exported_fp32_gives_the_eager_metrics_and_int8_is_reported(tmp_path, capsys):
    from dataseg.engine import build_cfg

    cfg = build_cfg(QUICKSTART, tiny_opts(tmp_path, tmp_path / "train"))
    config = tmp_path / "c.yaml"
    config.write_text(cfg.dump())
    rc = _tool().main(["--config-file", str(config), "--output", str(tmp_path / "ev"),
                       "--datasets", "synth_sem_val", "synth_pan_val", "--quantize",
                       "dynamic", "--eager"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _table(out)
    assert ("synth_sem_val", "sem_seg/mIoU") in rows and \
        ("synth_pan_val", "panoptic_seg/PQ") in rows, out
    for key, (eager, fp32, int8, diff) in rows.items():
        if math.isnan(eager):  # a metric without support is nan on both sides
            assert math.isnan(fp32), key
            continue
        assert fp32 == pytest.approx(eager, abs=0.01), key  # same outputs, same metrics
        assert math.isnan(int8) or diff == pytest.approx(int8 - fp32, abs=0.011), key
    for d in ("eval_fp32", "eval_int8", "eval_eager"):
        summary = json.loads((tmp_path / "ev" / d / "eval_summary.json").read_text())
        assert summary, d
    for name in ("synth_sem_val", "synth_pan_val"):
        info = json.loads((tmp_path / "ev" / name / "model.json").read_text())
        assert info["int8"]["mode"] == "dynamic" and info["dynamic_size"] is True


def test_unknown_dataset_is_one_line(tmp_path, capsys):
    from dataseg.engine import build_cfg

    cfg = build_cfg(QUICKSTART, tiny_opts(tmp_path, tmp_path / "train"))
    config = tmp_path / "c.yaml"
    config.write_text(cfg.dump())
    rc = _tool().main(["--config-file", str(config), "--output", str(tmp_path / "ev"),
                       "--datasets", "nope_val"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope_val" in err[0], err
