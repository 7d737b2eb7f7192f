"""CPU forward latency and peak memory of DaTaSeg with ViTDet-B vs ResNet-50, and parameter
counts of the ViT backbones against the published sizes (ViT-B 86M, ViT-L 304M).

Same machine, same input (one fp32 512x512 image, semantic inference with post-processing),
random weights, 100 queries, 9 decoder layers. R50 = configs/Base-DaTaSeg.yaml (deformable
pixel decoder); ViTDet-B = configs/dataseg_vitdet_b.yaml (vitdet_sum pixel decoder). Each model
runs alone in a fresh subprocess so that its peak resident memory (max RSS) is its own; then
both run alternately in one process, which gives the latency ratio most robust to other load.

    python benchmarks/bench_vitdet.py [--threads 2] [--warmup 1] [--repeats 3]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = 512
NUM_CLASSES = 150
PUBLISHED_M = {"ViT-B": 86, "ViT-L": 304}
CONFIGS = {"r50": "configs/Base-DaTaSeg.yaml", "vitdet_b": "configs/dataseg_vitdet_b.yaml",
           "vitdet_l": "configs/dataseg_vitdet_l.yaml"}


def build_cfg(name):
    from dataseg.engine import build_cfg as _build

    return _build(str(REPO / CONFIGS[name]), [
        "MODEL.DEVICE", "cpu", "MODEL.VIT.WEIGHTS", "", "MODEL.WEIGHTS", "",
        "MODEL.DATASEG.CLASSIFIER.TEXT_DIM", 384,
        "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL", "pytorch"])


def build_model(name):
    import torch
    from detectron2.modeling import build_model as _build

    import dataseg.modeling  # noqa: F401  (registers DaTaSeg and the backbones)

    torch.manual_seed(0)
    model = _build(build_cfg(name)).eval()
    model.set_vocabulary("bench", torch.randn(NUM_CLASSES, 384),
                         torch.arange(NUM_CLASSES) < 100)
    return model


def forward_fn(model):
    import torch

    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    inputs = [{"image": image, "height": SIZE, "width": SIZE, "dataset_name": "bench",
               "task": "semantic"}]
    return lambda: model(inputs)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def timed(fns, warmup, repeats):
    """Runs the functions alternately (who goes first alternates too); median seconds each."""
    import torch

    times = {k: [] for k in fns}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            order = list(fns) if i % 2 == 0 else list(fns)[::-1]
            for k in order:
                t0 = time.perf_counter()
                fns[k]()
                if i >= warmup:
                    times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "params":
        from detectron2.modeling import build_backbone

        import dataseg.modeling  # noqa: F401

        out = {}
        for name, label in (("vitdet_b", "ViT-B"), ("vitdet_l", "ViT-L")):
            backbone = build_backbone(build_cfg(name))
            rel = sum(p.numel() for n, p in backbone.vit.named_parameters() if "rel_pos" in n)
            out[label] = {"trunk": n_params(backbone.vit), "rel_pos": rel,
                          "pyramid": n_params(backbone.pyramid)}
            del backbone
        print("RESULT " + json.dumps(out))
        return
    names = ["r50", "vitdet_b"] if args.child == "both" else [args.child]
    models = {n: build_model(n) for n in names}
    med, times = timed({n: forward_fn(m) for n, m in models.items()}, args.warmup, args.repeats)
    result = {"latency_s": med, "times": times,
              "params": {n: n_params(m) for n, m in models.items()},
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(result))


def run_child(name, args):
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} benchmark failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=["r50", "vitdet_b", "both", "params"],
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    res = {n: run_child(n, args) for n in ("params", "r50", "vitdet_b", "both")}
    print("Backbone parameters (random init; trunk = patch + position embeddings + blocks, "
          "incl. relative-position tables):")
    for label, c in res["params"].items():
        print(f"  {label}: trunk {c['trunk'] / 1e6:.1f}M (published {PUBLISHED_M[label]}M; "
              f"relative-position tables {c['rel_pos'] / 1e6:.2f}M), simple feature pyramid "
              f"{c['pyramid'] / 1e6:.1f}M")
    r50, vit, both = res["r50"], res["vitdet_b"], res["both"]
    print(f"CPU fp32, {args.threads} threads, 1x3x{SIZE}x{SIZE}, semantic inference, "
          f"{args.repeats} timed runs after {args.warmup} warm-up")
    print(f"{'model':<22}{'params':>10}{'median latency (s)':>20}{'peak RSS (MiB)':>16}")
    for name, r in (("DaTaSeg R50", r50), ("DaTaSeg ViTDet-B", vit)):
        key = "r50" if r is r50 else "vitdet_b"
        print(f"{name:<22}{r['params'][key] / 1e6:>9.1f}M{r['latency_s'][key]:>20.3f}"
              f"{r['peak_rss_mib']:>16.0f}")
    sep = vit["latency_s"]["vitdet_b"] / r50["latency_s"]["r50"]
    alt = both["latency_s"]["vitdet_b"] / both["latency_s"]["r50"]
    print(f"ratios ViTDet-B / R50: latency {sep:.2f}x (separate processes), {alt:.2f}x "
          f"(alternating in one process: {both['latency_s']['vitdet_b']:.3f} s vs "
          f"{both['latency_s']['r50']:.3f} s); peak memory "
          f"{vit['peak_rss_mib'] / r50['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
