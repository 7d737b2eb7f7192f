"""tools/compare_in_miniature.py end to end on a tiny world: every metric of the table is
produced for a separate and a co-trained run, with the plot and the uniform-guess baseline."""
import json
import os
import re
import subprocess
import sys

import pytest
from engine_helpers import REPO, tiny_opts

pytestmark = pytest.mark.slow

SKIP = {"DATASETS.TRAIN", "DATASETS.TRAIN_RATIOS", "DATASETS.TRAIN_AUGMENTATIONS",
        "DATASETS.TEST", "SOLVER.MAX_ITER", "OUTPUT_DIR", "SEED"}


def test_comparison_table_has_every_metric(tmp_path):
    flat = tiny_opts(tmp_path, tmp_path / "unused")
    opts = [x for k, v in zip(flat[::2], flat[1::2]) if k not in SKIP for x in (k, v)]
    out = tmp_path / "miniature"
    env = dict(os.environ, DATASEG_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "compare_in_miniature.py"), "--combos", "B",
         "S+P+B", "--seeds", "0", "--iters", "2", "--out", str(out)] + opts,
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| B |")
            or line.startswith("| S+P+B |")]
    assert len(rows) == 2, table
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert len(cells) == 5 and all(re.fullmatch(r"-?\d+\.\d", c) for c in cells), row
    data = json.loads((out / "table.json").read_text())
    assert 0 < data["uniform_guess_unseen_miou"] < 100
    assert (out / "comparison.png").stat().st_size > 1000
