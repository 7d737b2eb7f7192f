"""Quality floor end to end: a short seeded co-training of the quickstart model (train_net.py,
Detectron2's trainer, loaders and evaluators, the synthetic world) must clear accuracy floors
well above what a broken model reaches.

How the floors were derived: this exact run (ITERS iterations, batch 4, one thread, the three
test sets below) was made twice on the 2-core development machine, seeds 0 and 1 (about 4
minutes each), and once with 1 iteration (an untrained model: about what a model with broken
losses or inference reaches). Each floor is about half the lower of the two trained values
(rounded down), which leaves room for run-to-run variation across machines, thread counts and
numerically equivalent code changes, and stays far above the untrained value. A first version
trained 200 iterations: its thing PQ (1.6) was at noise level and fell to 0.0 after a
rounding-level change (fused AdamW), so the schedule was doubled. PQ_th > 0 needs at least one
predicted thing segment matched to a ground-truth one (IoU > 0.5), so the panoptic check
cannot pass with zero thing segments.
"""
import json
import os
import subprocess
import sys

import pytest
from engine_helpers import QUICKSTART, REPO

pytestmark = pytest.mark.slow

ITERS = 400
#        (dataset, metric): (floor, measured after ITERS (lower of seeds 0, 1), measured untrained)
FLOORS = {
    ("synth_sem_val", "sem_seg/mIoU"): (33.0, 67.02, 1.89),
    ("synth_pan_val", "panoptic_seg/PQ"): (11.0, 23.85, 0.0),
    ("synth_pan_val", "panoptic_seg/PQ_th"): (2.5, 5.99, 0.0),
    ("synth_box_val_instance", "segm/AP"): (3.5, 7.71, 0.0),
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
