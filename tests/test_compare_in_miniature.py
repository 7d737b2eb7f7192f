"""tools/compare_in_miniature.py: the paper's equal-images protocol and the paired test pinned
by hand-computed values; end to end on a tiny world: every metric of the table is produced,
each finished run is stored as one file and reused (nothing retrained), the plot is written."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from engine_helpers import REPO, tiny_opts

spec = importlib.util.spec_from_file_location("compare_in_miniature",
                                              REPO / "tools" / "compare_in_miniature.py")
cim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cim)

SKIP = {"DATASETS.TRAIN", "DATASETS.TRAIN_RATIOS", "DATASETS.TRAIN_AUGMENTATIONS",
        "DATASETS.TEST", "SOLVER.MAX_ITER", "OUTPUT_DIR", "SEED"}


def test_paper_protocol_gives_each_dataset_the_cotrained_runs_images():
    # reference S+P+B: 500 iterations, ratios 2:1:1 -> shares 1/2, 1/4, 1/4
    assert cim.run_iterations("SPB", 500, [2, 1, 1], "paper") == 500
    assert cim.run_iterations("S", 500, [2, 1, 1], "paper") == 250
    assert cim.run_iterations("P", 500, [2, 1, 1], "paper") == 125
    assert cim.run_iterations("SP", 500, [2, 1, 1], "paper") == 375
    assert cim.run_iterations("S", 500, [2, 1, 1], "equal-iters") == 500
    batches = [16, 8, 8]
    co = cim.images_seen("SPB", 500, [2, 1, 1], batches)
    assert co == {"S": 4000, "P": 1000, "B": 1000}  # 500 * 1/2 * 16, 500 * 1/4 * 8
    for combo in ("S", "P", "B", "SP", "SB", "PB"):
        n = cim.run_iterations(combo, 500, [2, 1, 1], "paper")
        seen = cim.images_seen(combo, n, [2, 1, 1], batches)
        assert seen == pytest.approx({c: co[c] for c in combo}, abs=8), combo
    with pytest.raises(ValueError, match="ratios"):
        cim.shares([1, 1])


def test_paired_test_hand_computed():
    # differences 2, 3, 4: mean 3, sd 1, t = 3 / (1 / sqrt 3) = 5.196 with 2 degrees of freedom;
    # t_0.975,2 = 4.3027 -> half-width 4.3027 / sqrt 3 = 2.4841;
    # two-sided p (df 2) = 1 - t / sqrt(t^2 + 2) = 1 - 5.19615 / 5.38516 = 0.03510
    r = cim.paired_test([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(3.0)
    assert r["ci_low"] == pytest.approx(0.5159, abs=1e-3)
    assert r["ci_high"] == pytest.approx(5.4841, abs=1e-3)
    assert r["p"] == pytest.approx(0.03510, abs=1e-4)
    assert cim.verdict(r) == "holds"
    assert cim.verdict(cim.paired_test([1.0, 2.0], [2.0, 1.5])) == "not significant"
    assert cim.verdict(cim.paired_test([1.0, 1.1, 1.2], [2.0, 2.05, 2.3])).startswith("does not")
    assert cim.verdict(cim.paired_test([], [])) == "not yet measured"


def test_extra_row_parsing():
    row = cim.parse_extra_row("lin head=SPB:MODEL.DATASEG.CLASS_HEAD linear_relu", "design")
    assert row == cim.Row("design", "lin head", "SPB", ("MODEL.DATASEG.CLASS_HEAD",
                                                        "linear_relu"))
    with pytest.raises(Exception, match="KEY VALUE"):
        cim.parse_extra_row("x=SP:ONLY_KEY", "design")
    with pytest.raises(Exception, match="expected"):
        cim.parse_extra_row("no combo", "design")


@pytest.mark.slow
def test_comparison_table_end_to_end_and_runs_reused(tmp_path):
    flat = tiny_opts(tmp_path, tmp_path / "unused")
    opts = [x for k, v in zip(flat[::2], flat[1::2]) if k not in SKIP for x in (k, v)]
    out, results = tmp_path / "miniature", tmp_path / "results"
    env = dict(os.environ, DATASEG_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "tools" / "compare_in_miniature.py"), "--rows", "B",
           "S+P+B", "--seeds", "0", "--iters", "3", "--out", str(out), "--results",
           str(results)]
    proc = subprocess.run(cmd + opts, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (results / "miniature_table2.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| B |") or line.startswith("| S+P+B |")}
    assert set(rows) == {"B", "S+P+B"}, table
    for name, row in rows.items():
        cells = [c.strip() for c in row.strip("|").split("|")]
        # iterations under the paper protocol (B sees 3 * 1/3 iterations' worth), images seen
        assert cells[1] == ("1" if name == "B" else "3"), row
        assert cells[2] == ("-/-/2" if name == "B" else "2/2/2"), row
        assert len(cells) == 9 and all(re.fullmatch(r"-?\d+\.\d", c) for c in cells[4:]), row
    runs = sorted((results / "runs").glob("*.json"))
    assert len(runs) == 2
    rec = json.loads(runs[0].read_text())
    assert {"metrics", "images_seen", "iterations", "spec", "trained_commit"} <= set(rec)
    data = json.loads((results / "miniature_table2.json").read_text())
    assert 0 < data["uniform_guess_unseen_miou"] < 100
    assert any(c["claim"] == "box -> mask transfer" and c["n"] == 1 for c in data["claims"])
    assert (results / "miniature_table2.png").stat().st_size > 1000
    # the stored runs are reused: a second call trains nothing and gives the same table
    for d in out.iterdir():
        if d.is_dir():
            (d / "model_final.pth").unlink()
    proc = subprocess.run(cmd + ["--report-only"] + opts, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (results / "miniature_table2.md").read_text() == table
