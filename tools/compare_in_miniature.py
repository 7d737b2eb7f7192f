#!/usr/bin/env python
"""The paper's comparisons in the embedded synthetic world: Table 1/2 (training-set
combinations), Table 4 (number of queries), Table 5 (dataset-specific modules) and design-choice
rows, each over several seeds, with a paired test for every claimed gain.

Each run is a ``train_net.py`` subprocess (exactly what a user runs), evaluated on every
synthetic test set with Detectron2's evaluators. Every finished run is stored as one small JSON
file under ``<results>/runs/`` (spec, metrics, images seen, time, commit), so a later session
continues the tables: runs whose file exists are reused, never retrained.

Protocols (``--protocol``):
  paper  (default) "the models see the same number of images in cotraining and separately
         training on each dataset": the reference co-trained run (all three sets, ``--iters``
         iterations, ``--ratios``, the config's batch sizes) sees iters * share_d * batch_d
         images of dataset d; a run on a subset C of the datasets gets
         iters * sum_{d in C} share_d iterations, so each of its datasets is seen exactly as
         often as in the reference run. A separate run on S is therefore shorter.
  equal-iters  every run gets ``--iters`` iterations (docs/RESULTS.md, 'Earlier measurement').

    # Table 1/2 subset, 3 seeds (finished runs reused), tables + plots under docs/results/
    python tools/compare_in_miniature.py --tables table2 --rows S P B S+P+B --seeds 0 1 2
    # everything that is defined, then only regenerate the tables from the stored runs
    python tools/compare_in_miniature.py --tables all --seeds 0 1 2
    python tools/compare_in_miniature.py --tables all --seeds 0 1 2 --report-only
    # an extra row (e.g. a new class head) on the co-trained setting: NAME=COMBO:KEY VALUE ...
    python tools/compare_in_miniature.py --tables design \\
        --extra-row "linear_relu head=SPB:MODEL.DATASEG.CLASS_HEAD linear_relu"
"""
import argparse
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataseg.utils.atomic import atomic_write_bytes  # noqa: E402

SEM, PAN, BOX = "synth_sem_train", "synth_pan_train", "synth_box_train"
LETTERS = "SPB"
TRAIN_SETS = {"S": SEM, "P": PAN, "B": BOX}
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
# Dataset-specific modules: which module serves each test set (its training dataset).
DS_TEST_MAP = str(["synth_sem_val:synth_sem_train", "synth_sem_panoptic_val:synth_sem_train",
                   "synth_unseen_sem_val:synth_sem_train", "synth_pan_val:synth_pan_train",
                   "synth_box_val_instance:synth_box_train"])
DS = "MODEL.DATASEG.DATASET_SPECIFIC."


@dataclass(frozen=True)
class Row:
    """One table row: a training-set combination ("SPB") plus config overrides."""

    table: str
    name: str
    combo: str
    opts: Tuple[str, ...] = ()
    world: str = "default"  # DATASETS.SYNTHETIC.PRESET


def _combo_name(combo: str) -> str:
    return "+".join(combo)


TABLE2 = [Row("table2", _combo_name(c), c) for c in ("S", "P", "B", "SP", "SB", "PB", "SPB")]
# Table 4: the quickstart model has 32 queries; 16/32/48 keep the paper's 50/100/150 ratios.
# The 32-query row is the co-trained baseline itself (no override: the same run as Table 2's).
TABLE4 = [Row("table4", f"{n} queries", "SPB",
              () if n == 32 else ("MODEL.DATASEG.NUM_OBJECT_QUERIES", str(n)))
          for n in (16, 32, 48)]
TABLE5 = [
    Row("table5", "shared (DaTaSeg)", "SPB"),
    Row("table5", "+D-S queries", "SPB", (DS + "QUERIES", "True", DS + "TEST_MAP", DS_TEST_MAP)),
    Row("table5", "+D-S heads", "SPB", (DS + "HEADS", "True", DS + "TEST_MAP", DS_TEST_MAP)),
    Row("table5", "+D-S prompts", "SPB",
        (DS + "PROMPT_TOKENS", "4", DS + "TEST_MAP", DS_TEST_MAP)),
    Row("table5", "+D-S all", "SPB", (DS + "QUERIES", "True", DS + "HEADS", "True",
                                      DS + "PROMPT_TOKENS", "4", DS + "TEST_MAP", DS_TEST_MAP)),
]
DESIGN = [
    Row("design", "baseline (focal 5, match empty)", "SPB"),
    Row("design", "MATCH_EMPTY_MERGED False", "SPB",
        ("MODEL.DATASEG.MATCH_EMPTY_MERGED", "False")),
    Row("design", "focal weight 20", "SPB", ("MODEL.DATASEG.FOCAL_WEIGHT", "20.0")),
    Row("design", "focal weight 1", "SPB", ("MODEL.DATASEG.FOCAL_WEIGHT", "1.0")),
    # issue 10: the paper's ResNet pixel decoder (transformer encoder + FPN, LN/GeLU) and the
    # paper's class head (linear + ReLU) against today's defaults (deformable, linear_relu_linear)
    Row("design", "pixel decoder transformer_fpn (LN, GeLU)", "SPB",
        ("MODEL.DATASEG.PIXEL_DECODER.NAME", "transformer_fpn",
         "MODEL.DATASEG.PIXEL_DECODER.NORM", "LN", "MODEL.DATASEG.PIXEL_DECODER.ACTIVATION",
         "gelu")),
    Row("design", "class head linear_relu", "SPB", ("MODEL.DATASEG.CLASS_HEAD", "linear_relu")),
]
# The harder world: many touching same-class things (semantic->panoptic transfer test).
HARD = [Row("hard", _combo_name(c), c, (), "crowded") for c in ("S", "P", "SP", "SPB")]
TABLES = {"table2": TABLE2, "table4": TABLE4, "table5": TABLE5, "design": DESIGN, "hard": HARD}
TITLES = {
    "table2": "Table 1/2 in miniature: training-set combinations",
    "table4": "Table 4 in miniature: number of segment queries (paper 50/100/150)",
    "table5": "Table 5 in miniature: dataset-specific (D-S) modules added to the shared model",
    "design": "Design choices (co-trained S+P+B)",
    "hard": "Crowded world (many touching same-class things): training-set combinations",
}
# Claimed gains, tested pairwise by seed: (table, row a, row b, column): "a beats b".
CLAIMS = [
    ("co-training helps the small (semantic) dataset", "table2", "S+P+B", "S", "sem mIoU"),
    ("co-training helps the small (semantic) dataset", "table2", "S+P", "S", "sem mIoU"),
    ("co-training helps panoptic", "table2", "S+P+B", "P", "pan PQ"),
    ("box -> mask transfer", "table2", "S+P+B", "B", "box->inst mask AP"),
    ("box -> mask transfer", "table2", "P+B", "B", "box->inst mask AP"),
    ("semantic -> panoptic transfer", "table2", "S+P+B", "S", "sem->pan PQ"),
    ("semantic -> panoptic transfer", "table2", "S+P", "S", "sem->pan PQ"),
    ("semantic -> panoptic transfer (crowded world)", "hard", "S+P+B", "S", "sem->pan PQ"),
    ("semantic -> panoptic transfer (crowded world)", "hard", "S+P", "S", "sem->pan PQ"),
    ("more queries help", "table4", "48 queries", "32 queries", None),
    ("more queries help", "table4", "32 queries", "16 queries", None),
    ("dataset-specific modules hurt", "table5", "shared (DaTaSeg)", "+D-S all", None),
    ("dataset-specific modules hurt", "table5", "shared (DaTaSeg)", "+D-S queries", None),
    ("dataset-specific modules hurt", "table5", "shared (DaTaSeg)", "+D-S heads", None),
    ("dataset-specific modules hurt", "table5", "shared (DaTaSeg)", "+D-S prompts", None),
    ("design: MATCH_EMPTY_MERGED True vs False", "design", "baseline (focal 5, match empty)",
     "MATCH_EMPTY_MERGED False", None),
    ("design: focal weight 5 vs 20", "design", "baseline (focal 5, match empty)",
     "focal weight 20", None),
    ("design: focal weight 5 vs 1", "design", "baseline (focal 5, match empty)",
     "focal weight 1", None),
    ("design: deformable vs the paper's transformer_fpn pixel decoder", "design",
     "baseline (focal 5, match empty)", "pixel decoder transformer_fpn (LN, GeLU)", None),
    ("design: linear_relu_linear vs the paper's linear_relu class head", "design",
     "baseline (focal 5, match empty)", "class head linear_relu", None),
]


# --------------------------------------------------------------------------- protocol
def shares(ratios: Sequence[float]) -> List[float]:
    """Normalised sampling shares of S, P, B in the reference co-trained run."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"--ratios needs three non-negative values (S P B), got {list(ratios)}")
    total = float(sum(ratios))
    return [r / total for r in ratios]


def run_iterations(combo: str, iters: int, ratios: Sequence[float], protocol: str) -> int:
    """Iterations of a run on ``combo`` under ``protocol`` (see the module docstring)."""
    if protocol == "equal-iters":
        return int(iters)
    if protocol != "paper":
        raise ValueError(f"unknown protocol {protocol!r}")
    share = shares(ratios)
    frac = sum(share[LETTERS.index(c)] for c in combo)
    if frac <= 0:
        raise ValueError(f"combination {combo} has sampling ratio 0 in --ratios {ratios}")
    return max(1, int(round(iters * frac)))


def images_seen(combo: str, n_iters: int, ratios: Sequence[float],
                batch_sizes: Sequence[int]) -> Dict[str, float]:
    """Expected images of each dataset seen by a run: iters * ratio_d / sum_C ratio * batch_d."""
    sub = {c: ratios[LETTERS.index(c)] for c in combo}
    total = sum(sub.values())
    return {c: n_iters * sub[c] / total * batch_sizes[LETTERS.index(c)] for c in combo}


# ------------------------------------------------------------------------------ stats
def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_test(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Paired t-test of a - b over seeds: mean difference, its 95% t-interval, two-sided p."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b) if x == x and y == y]
    n = len(d)
    out = {"n": n, "mean_diff": statistics.mean(d) if d else float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan")}
    if n >= 2:
        sd = statistics.stdev(d)
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["mean_diff"] - half, out["mean_diff"] + half
        if sd > 0:
            t = out["mean_diff"] / (sd / math.sqrt(n))
            out["p"] = float(2 * stats.t.sf(abs(t), n - 1))
        else:
            out["p"] = 0.0 if out["mean_diff"] != 0 else 1.0
    return out


def verdict(test: Dict[str, float]) -> str:
    """'holds' when the 95% interval of a - b lies above 0, 'reversed' below 0, else unclear."""
    if test["n"] < 2:
        return "not yet measured" if test["n"] == 0 else "one seed only"
    if test["ci_low"] > 0:
        return "holds"
    if test["ci_high"] < 0:
        return "does not hold (reversed)"
    return "not significant"


# ------------------------------------------------------------------------------- runs
def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class RunSpec:
    """Everything that decides a run's result; its hash names the run's files."""

    row: Row
    seed: int
    iters: int
    config: str
    ratios: Tuple[float, ...]
    batch_sizes: Tuple[int, ...]
    world_seed: int
    extra_opts: Tuple[str, ...] = field(default_factory=tuple)

    def train_sets(self) -> List[str]:
        return [TRAIN_SETS[c] for c in self.row.combo]

    def opts(self) -> List[str]:
        train = self.train_sets()
        idx = [LETTERS.index(c) for c in self.row.combo]
        opts = [
            "DATASETS.TRAIN", str(tuple(train)),
            "DATASETS.TRAIN_RATIOS", str([float(self.ratios[i]) for i in idx]),
            "DATASETS.TRAIN_BATCH_SIZES", str([int(self.batch_sizes[i]) for i in idx]),
            "DATASETS.TRAIN_LOSS_WEIGHTS", "[]",
            "DATASETS.TRAIN_AUGMENTATIONS", str([AUGMENTATION[t] for t in train]),
            "DATASETS.TRAIN_CROP_SIZES", "[]",
            "DATASETS.TEST", str(tuple(TEST_SETS)),
            "SOLVER.MAX_ITER", str(self.iters),
            "SEED", str(self.seed),
            "DATASETS.SYNTHETIC.SEED", str(self.world_seed),
        ]
        if self.row.world != "default":
            opts += ["DATASETS.SYNTHETIC.PRESET", self.row.world]
        return opts + list(self.row.opts) + list(self.extra_opts)

    def key(self) -> Dict:
        config = Path(self.config).resolve()
        try:
            config = config.relative_to(REPO)
        except ValueError:
            pass
        return {"config": str(config), "opts": self.opts()}

    def run_id(self) -> str:
        """Named by the spec alone (not the row's name), so a row that is the same run in two
        tables (e.g. the co-trained baseline) is trained once."""
        digest = hashlib.sha1(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:10]
        world = "" if self.row.world == "default" else f"{self.row.world}-"
        return f"{world}{self.row.combo}-{digest}-seed{self.seed}"


def _train_seconds(log: Path) -> Optional[float]:
    """Detectron2's 'Overall training speed: ... (x s / it)' and 'Total training time'."""
    if not log.exists():
        return None
    m = re.findall(r"Total training time: (\d+):(\d+):(\d+)", log.read_text(errors="replace"))
    if not m:
        return None
    h, mi, s = map(int, m[-1])
    return float(h * 3600 + mi * 60 + s)


def record_run(spec: RunSpec, out_dir: Path, run_file: Path, wall_s: Optional[float],
               images: Dict[str, float], trained_commit: str, evaluated_commit: str) -> Dict:
    """Writes the run file. Commits are those checked out when the train_net.py process that
    trained / evaluated started (it imports the code then)."""
    summary = json.loads((out_dir / "eval_summary.json").read_text())
    metrics = {f"{r['dataset']}|{r['metric']}": float("nan") if r["value"] is None else r["value"]
               for r in summary["rows"]}  # eval_summary.json writes NaN as null
    record = {
        "run_id": spec.run_id(), "table": spec.row.table, "row": spec.row.name,
        "combo": spec.row.combo, "world": spec.row.world, "seed": spec.seed,
        "iterations": spec.iters, "images_seen": images, "spec": spec.key(),
        "metrics": metrics, "wall_seconds": wall_s,
        "train_seconds": _train_seconds(out_dir.with_suffix(".log")),
        "trained_commit": trained_commit, "evaluated_commit": evaluated_commit,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(run_file), (json.dumps(record, indent=1) + "\n").encode())
    return record


def _evaluated_with(record: Optional[Dict], commit: str) -> bool:
    """Whether ``record`` was evaluated by code that contains ``commit`` ("" = never)."""
    if not record or not commit:
        return False
    evaluated = record.get("evaluated_commit", "unknown").split("+")[0]
    proc = subprocess.run(["git", "merge-base", "--is-ancestor", commit, evaluated], cwd=REPO,
                          capture_output=True)
    return proc.returncode == 0


def execute(spec: RunSpec, args, images: Dict[str, float]) -> Optional[Dict]:
    """Trains (or, with --reevaluate, re-evaluates) one run; returns its record."""
    run_file = Path(args.results) / "runs" / f"{spec.run_id()}.json"
    out_dir = Path(args.out) / spec.run_id()
    log = out_dir.with_suffix(".log")
    have = json.loads(run_file.read_text()) if run_file.exists() else None
    ckpt = out_dir / "model_final.pth"
    if args.reevaluate and ckpt.exists() and not _evaluated_with(have, args.reevaluate_unless):
        cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", args.config,
               "--eval-only"] + spec.opts() + ["OUTPUT_DIR", str(out_dir),
                                               "MODEL.WEIGHTS", str(ckpt)]
        commit = git_commit()
        with open(out_dir.with_suffix(".eval.log"), "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"re-evaluation of {spec.run_id()} failed; see "
                               f"{out_dir.with_suffix('.eval.log')}")
        trained = have["trained_commit"] if have else "unknown"
        wall = have["wall_seconds"] if have else None
        print(f"  re-evaluated {spec.run_id()}", flush=True)
        return record_run(spec, out_dir, run_file, wall, images, trained, commit)
    if have is not None and not args.rerun:
        return have
    if (have is None and not args.rerun and ckpt.exists()
            and (out_dir / "eval_summary.json").exists()):
        # trained and evaluated, but its runner stopped before writing the run file
        print(f"  adopting finished run {spec.run_id()}", flush=True)
        return record_run(spec, out_dir, run_file, None, images, "unknown", "unknown")
    if args.report_only:
        return None
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file", args.config]
    # checkpoints do not change the result, so the period is not part of the run's spec
    cmd += spec.opts() + ["OUTPUT_DIR", str(out_dir),
                          "SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period)]
    resumed = (out_dir / "last_checkpoint").exists()
    if resumed:  # an interrupted run continues from its last checkpoint
        cmd.append("--resume")
        print(f"  resuming {spec.run_id()} from {out_dir / 'last_checkpoint'}", flush=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    t0 = time.time()
    with open(log, "a" if resumed else "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec.row.name} seed {spec.seed} failed; see {log}")
    wall = time.time() - t0
    print(f"  {spec.row.table}/{spec.row.name} seed {spec.seed} ({spec.iters} it): {wall:.0f}s",
          flush=True)
    record = record_run(spec, out_dir, run_file, wall, images, commit, commit)
    if resumed:
        record["resumed"] = True
        atomic_write_bytes(str(run_file), (json.dumps(record, indent=1) + "\n").encode())
    return record


# ----------------------------------------------------------------------------- report
def uniform_guess_miou(dataset_name: str) -> float:
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


def column_values(records: List[Dict], seeds: Sequence[int], title: str) -> Dict[int, float]:
    _, dataset, key = next(c for c in COLUMNS if c[0] == title)
    out = {}
    for r in records:
        if r["seed"] in seeds:
            out[r["seed"]] = r["metrics"].get(f"{dataset}|{key}", float("nan"))
    return out


def fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or mean != mean:
        return "not run"
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f}"


def build_report(table: str, rows: List[Row], records: Dict[str, List[Dict]], args,
                 baseline: Optional[float]) -> Tuple[str, Dict]:
    lines = [f"## {TITLES.get(table, table)}", "",
             f"Protocol: {args.protocol}; reference co-trained run {args.iters} iterations, "
             f"ratios S:P:B = {':'.join(f'{r:g}' for r in args.ratios)}, batch sizes "
             f"{'/'.join(str(b) for b in args.batch_sizes)}; seeds {args.seeds} "
             "(mean ± standard deviation over the seeds that finished, n = their number).", "",
             "| row | iters | images seen S/P/B | n | " + " | ".join(c[0] for c in COLUMNS)
             + " |", "|---|---|---|---|" + "---|" * len(COLUMNS)]
    data = {"table": table, "protocol": args.protocol, "iters": args.iters,
            "ratios": list(args.ratios), "batch_sizes": list(args.batch_sizes), "rows": []}
    for row in rows:
        recs = records[row.name]
        n_iters = run_iterations(row.combo, args.iters, args.ratios, args.protocol)
        seen = images_seen(row.combo, n_iters, args.ratios, args.batch_sizes)
        seen_txt = "/".join(f"{seen[c]:.0f}" if c in seen else "-" for c in LETTERS)
        cells, entry = [], {"row": row.name, "combo": row.combo, "world": row.world,
                            "overrides": list(row.opts), "iterations": n_iters,
                            "images_seen": seen, "seeds": sorted(r["seed"] for r in recs),
                            "metrics": {}}
        for title, _, _ in COLUMNS:
            vals = column_values(recs, args.seeds, title)
            m, s = mean_std(list(vals.values()))
            cells.append(fmt(m, s, len(vals)))
            entry["metrics"][title] = {"per_seed": vals, "mean": m, "std": s}
        data["rows"].append(entry)
        lines.append(f"| {row.name} | {n_iters} | {seen_txt} | {len(recs)} | "
                     + " | ".join(cells) + " |")
    if baseline is not None:
        lines += ["", f"Uniform-guess baseline on synth_unseen_sem_val: {baseline:.1f} mIoU."]
        data["uniform_guess_unseen_miou"] = baseline
    claims = claim_tests(table, records, args, baseline)
    if claims:
        lines += ["", "Paired tests over seeds (a - b, 95% t-interval, two-sided p):", "",
                  "| claim | a | b | metric | n | a - b | 95% CI | p | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in claims:
            ci = ("n/a" if c["ci_low"] != c["ci_low"]
                  else f"[{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]")
            diff = "n/a" if c["mean_diff"] != c["mean_diff"] else f"{c['mean_diff']:+.1f}"
            p = "n/a" if c["p"] != c["p"] else f"{c['p']:.3f}"
            lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {c['metric']} | {c['n']} | "
                         f"{diff} | {ci} | {p} | {c['verdict']} |")
        data["claims"] = claims
    commits = sorted({r["evaluated_commit"] for recs in records.values() for r in recs})
    lines += ["", "S = semantic (ADE-like), P = panoptic (COCO-like), B = boxes only "
              "(O365-like). 'sem->pan PQ': panoptic output on the semantic dataset's panoptic "
              "val set; 'box->inst mask AP': mask AP on the box dataset's mask val set. "
              f"Evaluated with commits: {', '.join(commits) or 'none'}."]
    return "\n".join(lines) + "\n", data


def claim_tests(table: str, records: Dict[str, List[Dict]], args, baseline) -> List[Dict]:
    out = []
    for claim, t, a, b, col in CLAIMS:
        if t != table or a not in records or b not in records:
            continue
        seeds_a = {r["seed"] for r in records[a] if r["seed"] in args.seeds}
        seeds_b = {r["seed"] for r in records[b] if r["seed"] in args.seeds}
        if not seeds_a & seeds_b:  # one line, not one per metric
            out.append({"claim": claim, "a": a, "b": b, "metric": col or "all", "n": 0,
                        "mean_diff": float("nan"), "ci_low": float("nan"),
                        "ci_high": float("nan"), "p": float("nan"),
                        "verdict": "not yet measured"})
            continue
        for title in [col] if col else [c[0] for c in COLUMNS]:
            va = column_values(records[a], args.seeds, title)
            vb = column_values(records[b], args.seeds, title)
            seeds = sorted(set(va) & set(vb))
            test = paired_test([va[s] for s in seeds], [vb[s] for s in seeds])
            out.append({"claim": claim, "a": a, "b": b, "metric": title, **test,
                        "verdict": verdict(test)})
    if table in ("table2", "hard") and baseline is not None and "S+P+B" in records:
        vals = list(column_values(records["S+P+B"], args.seeds, "unseen mIoU").values())
        test = paired_test(vals, [baseline] * len(vals))
        out.append({"claim": "open vocabulary above chance", "a": "S+P+B",
                    "b": "uniform guess", "metric": "unseen mIoU", **test,
                    "verdict": verdict(test)})
    return out


def plot(table: str, rows: List[Row], data: Dict, path: Path, baseline: Optional[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.8))
    names = [r.name for r in rows]
    for ax, (title, _, _) in zip(axes, COLUMNS):
        for i, entry in enumerate(data["rows"]):
            per_seed = list(entry["metrics"][title]["per_seed"].values())
            per_seed = [v for v in per_seed if v == v]
            if per_seed:
                ax.bar(i, statistics.mean(per_seed), color="tab:blue", alpha=0.6)
                ax.scatter([i] * len(per_seed), per_seed, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(title)
        if title == "unseen mIoU" and baseline is not None:
            ax.axhline(baseline, color="tab:red", linestyle="--", label="uniform guess")
            ax.legend(fontsize=7)
    fig.suptitle(TITLES.get(table, table) + " (bars: mean, dots: seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def strict_json(obj):
    """``obj`` with NaN/inf floats as None (standard JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def parse_extra_row(text: str, table: str) -> Row:
    """'NAME=COMBO:KEY VALUE KEY VALUE' -> Row (COMBO: letters of S, P, B)."""
    m = re.fullmatch(r"([^=]+)=([SPB]+)(?::(.*))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"--extra-row {text!r}: expected 'NAME=COMBO:KEY VALUE ...' (COMBO e.g. SPB)")
    opts = tuple(m.group(3).split()) if m.group(3) else ()
    if len(opts) % 2:
        raise argparse.ArgumentTypeError(f"--extra-row {text!r}: overrides must be KEY VALUE "
                                         "pairs")
    return Row(table, m.group(1).strip(), m.group(2), opts)


def default_batch_size(config: str, opts: List[str]) -> int:
    from dataseg.engine import build_cfg

    return int(build_cfg(config, opts).SOLVER.IMS_PER_BATCH)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--tables", nargs="+", default=["table2"],
                        choices=list(TABLES) + ["all"])
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only these row names (of the chosen tables)")
    parser.add_argument("--extra-row", action="append", default=[],
                        help="'NAME=COMBO:KEY VALUE ...' added to the first chosen table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocol", choices=["paper", "equal-iters"], default="paper")
    parser.add_argument("--iters", type=int, default=500,
                        help="iterations of the reference co-trained S+P+B run")
    parser.add_argument("--ratios", type=float, nargs=3, default=[1.0, 1.0, 1.0],
                        metavar=("S", "P", "B"), help="sampling ratios of S, P, B")
    parser.add_argument("--batch-sizes", type=int, nargs=3, default=None,
                        metavar=("S", "P", "B"), help="default: the config's IMS_PER_BATCH")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "output" / "miniature"),
                        help="checkpoints and logs (large, not committed)")
    parser.add_argument("--results", default=str(REPO / "docs" / "results"),
                        help="per-run files (runs/), tables and plots (committed)")
    parser.add_argument("--rerun", action="store_true", help="retrain finished runs")
    parser.add_argument("--reevaluate", action="store_true",
                        help="re-evaluate runs whose checkpoint is in --out with today's code")
    parser.add_argument("--reevaluate-unless", default="", metavar="COMMIT",
                        help="with --reevaluate: skip runs already evaluated by code that "
                             "contains COMMIT (e.g. an inference fix)")
    parser.add_argument("--checkpoint-period", type=int, default=100,
                        help="iterations between checkpoints; an interrupted run resumes from "
                             "its last one (statistically, not bit-, identical with workers)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tables from the stored per-run files")
    parser.add_argument("--order", choices=["seed", "row"], default="seed",
                        help="seed: all rows of seed 0 first (every row gets a seed early)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides passed to every run (KEY VALUE ...)")
    args = parser.parse_args(argv)
    shares(args.ratios)  # validates
    if args.batch_sizes is None:
        args.batch_sizes = [default_batch_size(args.config, args.opts)] * 3

    names = list(TABLES) if "all" in args.tables else args.tables
    chosen: Dict[str, List[Row]] = {t: list(TABLES[t]) for t in names}
    for text in args.extra_row:
        chosen[names[0]].append(parse_extra_row(text, names[0]))
    if args.rows:
        known = {r.name for rows in chosen.values() for r in rows}
        unknown = set(args.rows) - known
        if unknown:
            parser.error(f"--rows {sorted(unknown)} not in tables {names}: {sorted(known)}")
        chosen = {t: [r for r in rows if r.name in args.rows] for t, rows in chosen.items()}

    def spec_for(row: Row, seed: int) -> RunSpec:
        return RunSpec(row, seed, run_iterations(row.combo, args.iters, args.ratios,
                                                 args.protocol),
                       args.config, tuple(args.ratios), tuple(args.batch_sizes),
                       args.world_seed, tuple(args.opts))

    plan = [(row, seed) for t in chosen for row in chosen[t] for seed in args.seeds]
    if args.order == "seed":
        plan.sort(key=lambda rs: args.seeds.index(rs[1]))
    records: Dict[Tuple[str, str], List[Dict]] = {}
    t_start = time.time()
    for row, seed in plan:
        spec = spec_for(row, seed)
        seen = images_seen(row.combo, spec.iters, args.ratios, args.batch_sizes)
        rec = execute(spec, args, seen)
        records.setdefault((row.table, row.name), [])
        if rec is not None:
            records[(row.table, row.name)].append(rec)

    import dataseg  # noqa: F401  (registers the synthetic world for the baseline)
    from dataseg.data.synthetic import register_synthetic_world
    from dataseg.engine import build_cfg

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    baselines: Dict[str, float] = {}
    for table, rows in chosen.items():
        if not rows:
            continue
        world = rows[0].world
        if world not in baselines:
            extra = ["DATASETS.SYNTHETIC.PRESET", world] if world != "default" else []
            register_synthetic_world(build_cfg(args.config, ["DATASETS.SYNTHETIC.SEED",
                                                             str(args.world_seed)]
                                               + extra + list(args.opts)))
            baselines[world] = uniform_guess_miou("synth_unseen_sem_val")
        by_name = {r.name: records.get((table, r.name), []) for r in rows}
        text, data = build_report(table, rows, by_name, args, baselines[world])
        stem = f"miniature_{table}" + ("" if args.protocol == "paper" else "_equal_iters")
        atomic_write_bytes(str(results / f"{stem}.md"), text.encode())
        atomic_write_bytes(str(results / f"{stem}.json"),
                           (json.dumps(strict_json(data), indent=1,
                                       allow_nan=False) + "\n").encode())
        plot(table, rows, data, results / f"{stem}.png", baselines[world])
        print(text)
    print(f"compare_in_miniature: {len(plan)} runs requested, {time.time() - t_start:.0f}s "
          f"wall; tables in {results}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("DATASEG_NUM_THREADS", "2")
    main()
