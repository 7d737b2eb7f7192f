"""CPU inference latency and peak memory of DaTaSeg vs. HF transformers' Mask2Former.

Same machine, same input (one fp32 512x512 image), 100 queries, 6 encoder and 9 decoder layers,
ResNet-50 backbones with random weights. Each model runs in a fresh subprocess so that its
peak resident memory (max RSS) is its own. Latency: median over ``--repeats`` after
``--warmup`` runs, full inference: our ``model(inputs)`` (with semantic post-processing at the
original size) vs. HF's forward + ``post_process_semantic_segmentation``; HF forward alone is
reported too.

    python benchmarks/bench_model.py [--threads 2] [--repeats 5] [--task semantic]

Targets (issue 27): interleaved ours / HF <= 0.7x. The 1-minute load average is printed before
and after; the verdict against the target is printed only when the machine was quiet (load
before <= --threads, and after <= --threads + 1, which counts the benchmark's own threads);
otherwise the figures are marked "taken under load".
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = 512
NUM_CLASSES = 150  # an ADE20K-sized vocabulary


def load_average() -> float:
    """The 1-minute load average (os.getloadavg)."""
    return os.getloadavg()[0]


def wait_for_quiet(threads: int, timeout_s: float) -> float:
    """Waits (up to ``timeout_s``, polling every 5 s) for the 1-minute load average to fall to
    ``threads`` or below, e.g. after a previous benchmark; returns the last reading."""
    import time as _time

    deadline = _time.monotonic() + timeout_s
    load = load_average()
    while load > threads and _time.monotonic() < deadline:
        _time.sleep(5)
        load = load_average()
    return load


def quiet(load_before: float, load_after: float, threads: int) -> bool:
    """True when no other work ran: the load before the run was at most ``threads`` and after
    it at most ``threads + 1`` (the benchmark's own threads count in that one)."""
    return load_before <= threads and load_after <= threads + 1


def load_line(load_before: float, load_after: float, threads: int) -> str:
    state = ("quiet machine" if quiet(load_before, load_after, threads) else
             "TAKEN UNDER LOAD: no verdict (load above the threads used)")
    return (f"1-min load average: {load_before:.2f} before, {load_after:.2f} after "
            f"({threads} threads used; {os.cpu_count()} CPUs): {state}")


def verdict(name: str, ratio: float, target: float, load_before: float, load_after: float,
            threads: int) -> str:
    """'VERDICT name: ratio <= target: PASS/FAIL' on a quiet machine, else a marked line."""
    if not quiet(load_before, load_after, threads):
        return f"(no verdict for {name} {ratio:.2f}x: taken under load)"
    ok = "PASS" if ratio <= target else "FAIL"
    return f"VERDICT {name}: {ratio:.2f}x vs target <= {target:.2f}x: {ok}"


def _timeit(fn, warmup, repeats):
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def build_ours(args):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import dataseg.modeling  # noqa: F401  (registers DaTaSeg)
    from dataseg.config import add_dataseg_config

    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Base-DaTaSeg.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DATASEG.CLASSIFIER.TEXT_DIM = 384  # MiniLM size; embeddings injected below
    cfg.MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL = "pytorch"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    is_thing = torch.arange(NUM_CLASSES) < 100
    model.set_vocabulary("bench", torch.randn(NUM_CLASSES, 384), is_thing)
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    inputs = [{"image": image, "height": SIZE, "width": SIZE, "dataset_name": "bench",
               "task": args.task}]
    return lambda: model(inputs)


def run_ours(args):
    med, times = _timeit(build_ours(args), args.warmup, args.repeats)
    return {"latency_s": med, "times": times}


def build_hf(args):
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        ResNetConfig,
    )

    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                            layer_type="bottleneck",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False,
                               num_labels=NUM_CLASSES, num_queries=100, encoder_layers=6,
                               decoder_layers=10)  # HF runs decoder_layers - 1 = 9 layers
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    processor = Mask2FormerImageProcessor()
    pixel_values = torch.randn(1, 3, SIZE, SIZE)

    def full():
        out = model(pixel_values=pixel_values)
        return processor.post_process_semantic_segmentation(out, target_sizes=[(SIZE, SIZE)])

    return full, lambda: model(pixel_values=pixel_values)


def run_hf(args):
    full, forward = build_hf(args)
    fwd_med, _ = _timeit(forward, args.warmup, args.repeats)
    med, times = _timeit(full, args.warmup, args.repeats)
    return {"latency_s": med, "times": times, "forward_only_s": fwd_med}


def run_both(args):
    """Latency of both models alternating run by run in one process, so that load from other
    processes on a shared machine hits both alike."""
    import torch

    ours, (hf, _) = build_ours(args), build_hf(args)
    t = {"ours": [], "hf": []}
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            pair = (("ours", ours), ("hf", hf))
            for name, fn in (pair if i % 2 == 0 else pair[::-1]):  # alternate who goes first
                t0 = time.perf_counter()
                fn()
                if i >= args.warmup:
                    t[name].append(time.perf_counter() - t0)
    return {"ours_s": statistics.median(t["ours"]), "hf_s": statistics.median(t["hf"]),
            "ours_min_s": min(t["ours"]), "hf_min_s": min(t["hf"]), "times": t}


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    result = {"ours": run_ours, "hf": run_hf, "both": run_both}[args.child](args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--task", default="semantic", choices=["semantic", "panoptic", "instance"])
    p.add_argument("--wait-quiet", type=float, default=120, metavar="S",
                   help="wait up to S seconds for the load average to fall to --threads")
    p.add_argument("--child", choices=["ours", "hf", "both"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    load_before = wait_for_quiet(args.threads, args.wait_quiet)
    results = {}
    for name in ("ours", "hf", "both"):
        cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--task", args.task]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{name} benchmark failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT "):])
    load_after = load_average()
    ours, hf, both = results["ours"], results["hf"], results["both"]
    print(f"CPU fp32, {args.threads} threads, 1x3x{SIZE}x{SIZE}, 100 queries, 6 enc / 9 dec "
          f"layers, ResNet-50, {NUM_CLASSES} classes, task={args.task}")
    print(f"{'model':<34}{'median latency (s)':>20}{'peak RSS (MiB)':>18}")
    print(f"{'DaTaSeg (ours, full inference)':<34}{ours['latency_s']:>20.3f}"
          f"{ours['peak_rss_mib']:>18.0f}")
    print(f"{'HF Mask2Former (fwd + semseg pp)':<34}{hf['latency_s']:>20.3f}"
          f"{hf['peak_rss_mib']:>18.0f}")
    print(f"{'HF Mask2Former (forward only)':<34}{hf['forward_only_s']:>20.3f}{'':>18}")
    print(f"latency ratio ours/HF: {ours['latency_s'] / hf['latency_s']:.2f}x "
          f"(vs HF forward only: {ours['latency_s'] / hf['forward_only_s']:.2f}x); "
          f"peak memory ratio: {ours['peak_rss_mib'] / hf['peak_rss_mib']:.2f}x")
    print(f"interleaved in one process (robust to load): ours {both['ours_s']:.3f} s, "
          f"HF fwd + pp {both['hf_s']:.3f} s, ratio {both['ours_s'] / both['hf_s']:.2f}x; "
          f"best runs: ours {both['ours_min_s']:.3f} s, HF {both['hf_min_s']:.3f} s, ratio "
          f"{both['ours_min_s'] / both['hf_min_s']:.2f}x")
    print(load_line(load_before, load_after, args.threads))
    print(verdict("interleaved eager / HF (fwd + semseg pp)", both["ours_s"] / both["hf_s"],
                  0.7, load_before, load_after, args.threads))


if __name__ == "__main__":
    main()
