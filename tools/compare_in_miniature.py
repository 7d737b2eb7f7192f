#!/usr/bin/env python
"""The paper's comparisons (Table 1 and a Table 2 subset) in the embedded synthetic world.

Trains the quickstart model on every combination of the three synthetic training datasets
(semantic, panoptic, box-only), over several seeds, evaluates each on every synthetic test set
with Detectron2's evaluators, and writes a markdown table (mean +- spread over seeds) and a
plot. Each run is a `train_net.py` subprocess, exactly what a user runs.

    python tools/compare_in_miniature.py --seeds 0 1 --out output/miniature
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEM, PAN, BOX = "synth_sem_train", "synth_pan_train", "synth_box_train"
TRAIN_SETS = {"S": SEM, "P": PAN, "B": BOX}
# name -> training sets; "S" semantic (ADE-like), "P" panoptic (COCO-like), "B" boxes (O365-like)
COMBOS = {"S": "S", "P": "P", "B": "B", "S+P": "SP", "S+B": "SB", "P+B": "PB", "S+P+B": "SPB"}
AUGMENTATION = {SEM: "resize_crop", PAN: "lsj", BOX: "lsj"}
# (column title, test set, metric key in eval_summary.json rows)
COLUMNS = [
    ("sem mIoU", "synth_sem_val", "sem_seg/mIoU"),
    ("pan PQ", "synth_pan_val", "panoptic_seg/PQ"),
    ("sem->pan PQ", "synth_sem_panoptic_val", "panoptic_seg/PQ"),
    ("box->inst mask AP", "synth_box_val_instance", "segm/AP"),
    ("unseen mIoU", "synth_unseen_sem_val", "sem_seg/mIoU"),
]
TEST_SETS = [c[1] for c in COLUMNS]


def run_one(combo, seed, args):
    out_dir = Path(args.out) / f"{combo.replace('+', '')}_seed{seed}"
    summary = out_dir / "eval_summary.json"
    if summary.exists() and not args.rerun:
        return json.loads(summary.read_text())["rows"]
    train = [TRAIN_SETS[c] for c in COMBOS[combo]]
    opts = [
        "DATASETS.TRAIN", str(tuple(train)),
        "DATASETS.TRAIN_RATIOS", str([1.0] * len(train)),
        "DATASETS.TRAIN_BATCH_SIZES", "[]",
        "DATASETS.TRAIN_LOSS_WEIGHTS", "[]",
        "DATASETS.TRAIN_AUGMENTATIONS", str([AUGMENTATION[t] for t in train]),
        "DATASETS.TRAIN_CROP_SIZES", "[]",
        "DATASETS.TEST", str(tuple(TEST_SETS)),
        "SOLVER.MAX_ITER", str(args.iters),
        "SEED", str(seed),
        "DATASETS.SYNTHETIC.SEED", str(args.world_seed),
        "OUTPUT_DIR", str(out_dir),
    ]
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", args.config] + opts
    cmd += args.opts  # extra overrides, last so they win (tests use them for a tiny world)
    t0 = time.time()
    log = out_dir.with_suffix(".log")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"run {combo} seed {seed} failed; see {log}")
    print(f"  {combo:6s} seed {seed}: {time.time() - t0:.0f}s", flush=True)
    return json.loads(summary.read_text())["rows"]


def metric(rows, dataset, key):
    for r in rows:
        if r["dataset"] == dataset and r["metric"] == key:
            return r["value"]
    return float("nan")


def mean_spread(values):
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def uniform_guess_miou(dataset_name):
    """Expected mIoU of guessing a class uniformly at random per pixel, from the label maps."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from PIL import Image

    from dataseg.data.dataset_info import get_dataset_info

    info = get_dataset_info(dataset_name)
    k = info.num_classes
    counts = np.zeros(k, dtype=np.float64)
    for record in DatasetCatalog.get(dataset_name):
        label = np.asarray(Image.open(record["sem_seg_file_name"]))
        counts += np.bincount(label[label != info.ignore_label].ravel(), minlength=k)[:k]
    p = counts / counts.sum()
    present = p > 0
    iou = (p / k) / (p + 1.0 / k - p / k)
    return 100.0 * iou[present].mean()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--combos", nargs="+", default=list(COMBOS), choices=list(COMBOS))
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "output" / "miniature"))
    parser.add_argument("--rerun", action="store_true", help="ignore finished runs")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides passed to every run (KEY VALUE ...)")
    args = parser.parse_args()

    results = {}
    for combo in args.combos:
        for seed in args.seeds:
            results[(combo, seed)] = run_one(combo, seed, args)

    lines = [f"Synthetic world, {args.iters} iterations per run, seeds {args.seeds} "
             "(mean ± standard deviation over seeds).", "",
             "| training sets | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    table = {}
    for combo in args.combos:
        cells = []
        for title, dataset, key in COLUMNS:
            values = [metric(results[(combo, s)], dataset, key) for s in args.seeds]
            table[(combo, title)] = values
            cells.append(mean_spread(values))
        lines.append(f"| {combo} | " + " | ".join(cells) + " |")
    import dataseg  # noqa: F401  (registers the synthetic world for the baseline)
    from dataseg.data.synthetic import register_synthetic_world
    from dataseg.engine import build_cfg

    register_synthetic_world(build_cfg(args.config, ["DATASETS.SYNTHETIC.SEED",
                                                     str(args.world_seed)] + args.opts))
    baseline = uniform_guess_miou("synth_unseen_sem_val")
    lines += ["", f"Uniform-guess baseline on synth_unseen_sem_val: {baseline:.1f} mIoU.",
              "S = semantic (ADE-like), P = panoptic (COCO-like), B = boxes only (O365-like). "
              "'sem->pan PQ' evaluates panoptic output on the semantic dataset's panoptic "
              "val set; 'box->inst mask AP' mask AP on the box dataset's mask val set."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.json").write_text(json.dumps(
        {f"{c}|{t}": v for (c, t), v in table.items()} | {"uniform_guess_unseen_miou": baseline},
        indent=1))
    print("\n".join(lines))
    plot(table, args.combos, out / "comparison.png", baseline)


def plot(table, combos, path, baseline):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.5))
    for ax, (title, _, _) in zip(axes, COLUMNS):
        means, errs = [], []
        for combo in combos:
            vals = [v for v in table[(combo, title)] if v == v] or [0.0]
            means.append(statistics.mean(vals))
            errs.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.bar(range(len(combos)), means, yerr=errs, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(combos)))
        ax.set_xticklabels(combos, rotation=45)
        ax.set_title(title)
        if title == "unseen mIoU":
            ax.axhline(baseline, color="tab:red", linestyle="--", label="uniform guess")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("DATASEG_NUM_THREADS", "2")
    main()
