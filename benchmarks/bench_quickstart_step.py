"""Median training-step time of the quickstart (configs/quickstart.yaml) with the real trainer.

Builds ``DaTaSegTrainer`` (model, optimizer, multi-dataset loader with its worker) from the
quickstart config and times ``run_step`` (data + forward + loss + backward + optimizer step).
With ``--compare-pre-speedup`` the steps alternate, in the same trainer, between today's code
and the code paths before the CPU speed-up of issue 11 (per-tensor AdamW loop instead of the
fused kernel; focal terms from BCE-with-logits against tensors of ones and zeros), so both see
the same load; the ratio is printed. With ``--compare-channels-last`` two trainers (same seed,
so the same batches) alternate step by step, one with ``MODEL.DATASEG.CHANNELS_LAST True`` and
one with ``False``; the ratio is printed.

    python benchmarks/bench_quickstart_step.py [--threads 2] [--steps 16] [--compare-pre-speedup]
    python benchmarks/bench_quickstart_step.py --threads 1 --compare-channels-last
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from detectron2.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dataseg.modeling.losses as losses  # noqa: E402
from dataseg.engine import DaTaSegTrainer, default_argument_parser, setup_cfg  # noqa: E402


def _pre_speedup_focal_terms(logits, alpha, gamma):
    """The focal terms as computed before the speed-up (same values up to rounding)."""
    p = logits.sigmoid()
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    pos = pos * (1 - p) ** gamma
    neg = neg * p ** gamma
    if alpha >= 0:
        pos = pos * alpha
        neg = neg * (1 - alpha)
    return pos, neg


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--compare-pre-speedup", action="store_true")
    p.add_argument("--compare-channels-last", action="store_true")
    p.add_argument("--output-dir", default="output/bench_quickstart_step")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare_channels_last:
        return compare_channels_last(args)
    cfg = setup_cfg(default_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "quickstart.yaml"),
         "OUTPUT_DIR", args.output_dir]))
    trainer = DaTaSegTrainer(cfg)
    inner = trainer.inner
    current_focal = losses._focal_terms

    def use(new):
        for g in inner.optimizer.param_groups:
            g["fused"], g["foreach"] = new, False
        losses._focal_terms = current_focal if new else _pre_speedup_focal_terms

    variants = (True, False) if args.compare_pre_speedup else (True,)
    times = {v: [] for v in variants}
    with EventStorage(0):
        for i in range(args.warmup + args.steps):
            for new in (variants if i % 2 else variants[::-1]):
                use(new)
                t0 = time.perf_counter()
                inner.run_step()
                if i >= args.warmup:
                    times[new].append(time.perf_counter() - t0)
    use(True)
    now = statistics.median(times[True])
    print(f"quickstart training step, {args.threads} threads, {args.steps} steps, load average "
          f"{os.getloadavg()[0]:.1f}: median {now:.3f} s")
    if args.compare_pre_speedup:
        before = statistics.median(times[False])
        print(f"interleaved, pre-speed-up code paths: {before:.3f} s; now/before "
              f"{now / before:.3f}x")


def compare_channels_last(args):
    def trainer(channels_last):
        cfg = setup_cfg(default_argument_parser().parse_args(
            ["--config-file", str(REPO / "configs" / "quickstart.yaml"),
             "OUTPUT_DIR", f"{args.output_dir}/cl_{channels_last}",
             "MODEL.DATASEG.CHANNELS_LAST", str(channels_last)]))
        return DaTaSegTrainer(cfg).inner

    runs = {True: trainer(True), False: trainer(False)}
    times = {True: [], False: []}
    with EventStorage(0):
        for i in range(args.warmup + args.steps):
            for cl in ((True, False) if i % 2 else (False, True)):
                t0 = time.perf_counter()
                runs[cl].run_step()
                if i >= args.warmup:
                    times[cl].append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"quickstart training step, {args.threads} threads, {args.steps} interleaved steps "
          f"each, load average {os.getloadavg()[0]:.1f}: CHANNELS_LAST True {on:.3f} s, "
          f"False {off:.3f} s; True/False {on / off:.3f}x")


if __name__ == "__main__":
    main()
