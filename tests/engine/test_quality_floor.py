"""Quality floor end to end: a short seeded co-training of the quickstart model (train_net.py,
Detectron2's trainer, loaders and evaluators, the synthetic world) must clear accuracy floors
well above what a broken model reaches.

How the floors were derived: this exact run (seed 0, ITERS iterations, batch 4, one thread,
the three test sets below) was made on the 2-core development machine (1061 s wall while six
other jobs shared the machine; a few minutes on a quiet one), and once with 1 iteration (an
untrained model: about what a model with broken losses or inference reaches). Each floor is
about 0.6x the trained value (rounded down), which leaves room for run-to-run variation
across machines and thread counts, and stays far above the untrained value. PQ_th > 0 needs
at least one predicted thing segment matched to a ground-truth one (IoU > 0.5), so the
panoptic check cannot pass with zero thing segments.
"""
import json
import os
import subprocess
import sys

import pytest
from engine_helpers import QUICKSTART, REPO

pytestmark = pytest.mark.slow

ITERS = 200
#        (dataset, metric): (floor, measured after ITERS, measured untrained)
FLOORS = {
    ("synth_sem_val", "sem_seg/mIoU"): (30.0, 48.59, 1.89),
    ("synth_pan_val", "panoptic_seg/PQ"): (3.0, 4.83, 0.0),
    ("synth_pan_val", "panoptic_seg/PQ_th"): (0.5, 1.56, 0.0),
    ("synth_box_val_instance", "segm/AP"): (2.0, 3.59, 0.0),
}


def test_short_cotraining_clears_quality_floors(tmp_path):
    out = tmp_path / "train"
    args = [sys.executable, str(REPO / "train_net.py"), "--config-file", QUICKSTART,
            "DATASETS.TEST", '("synth_sem_val", "synth_pan_val", "synth_box_val_instance")',
            "SOLVER.MAX_ITER", str(ITERS), "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
            "SEED", "0", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, DATASEG_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = json.loads((out / "eval_summary.json").read_text())["rows"]
    got = {(r["dataset"], r["metric"]): r["value"] for r in rows}
    for key, (floor, trained, untrained) in FLOORS.items():
        assert untrained < floor < trained  # the floor separates working from broken
        assert got[key] >= floor, (key, got[key], floor, got)
    assert got[("synth_pan_val", "panoptic_seg/PQ_th")] > 0  # >= 1 matched thing segment
