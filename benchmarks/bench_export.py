"""CPU latency of the exported DaTaSeg (onnxruntime) vs eager PyTorch vs HF Mask2Former.

Same input (one 512x512 image), same model size as benchmarks/bench_model.py (ResNet-50,
100 queries, 6 encoder / 9 decoder layers, 150 classes, random weights), semantic task, fp32,
``--threads`` threads for every runtime. The three run interleaved in one process (the order
rotates every round, so load from other processes hits all alike); medians after warm-up and
their ratios are printed. Full inference each: our two predictors take the BGR image and
return Detectron2 outputs through the same Python post-processing
(``postprocess_logits``); HF runs forward + ``post_process_semantic_segmentation``. The
network alone (ONNX graph vs eager ``model.network`` vs HF forward) is timed too. The int8
models (``--quantize dynamic`` / ``static`` of tools/export_model.py, written by
``dataseg.export.quantize_onnx``; static calibrated on 4 generated images: the weights are
random, so this measures speed only; accuracy: docs/RESULTS.md, "CPU inference and export")
run in the same rotation unless ``--no-int8``.

    python benchmarks/bench_export.py [--threads 2] [--repeats 7] [--warmup 2] [--no-int8]

Target (issue 27): onnxruntime fp32 / HF full inference <= 0.5x. The 1-minute load average is
printed before and after; a verdict only on a quiet machine (see bench_model.py), else the
figures are marked "taken under load".
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import (  # noqa: E402
    NUM_CLASSES,
    SIZE,
    build_hf,
    load_average,
    load_line,
    verdict,
    wait_for_quiet,
)

import dataseg  # noqa: E402,F401
from dataseg.data.builtin import class_synonyms, load_vocabulary  # noqa: E402
from dataseg.engine import build_cfg  # noqa: E402
from dataseg.export import (  # noqa: E402
    ExportedPredictor,
    export_model,
    optimize_onnx,
    quantize_onnx,
)
from dataseg.predictor import DaTaSegPredictor, Vocabulary  # noqa: E402


def build_ours(export_dir: Path, threads: int):
    cfg = build_cfg(str(REPO / "configs" / "Base-DaTaSeg.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL",
                     "pytorch", "INPUT.MIN_SIZE_TEST", str(SIZE), "INPUT.MAX_SIZE_TEST",
                     str(2 * SIZE), "DATASETS.TEST", "()"])
    cats = load_vocabulary("ade20k_150")[:NUM_CLASSES]  # real names: an ADE20K vocabulary
    vocab = Vocabulary(class_synonyms(cats), [bool(c["isthing"]) for c in cats])
    torch.manual_seed(0)
    predictor = DaTaSegPredictor(cfg, vocabulary=vocab, task="semantic")
    export_model(predictor, export_dir, (SIZE, SIZE), torchscript=False)
    optimize_onnx(export_dir)
    return predictor, ExportedPredictor(export_dir, num_threads=threads)


def build_int8(export_dir: Path, mode: str, threads: int):
    """An int8 copy of the fp32 export in ``export_dir`` (its own folder per mode)."""
    import shutil

    qdir = export_dir.parent / f"int8_{mode}"
    shutil.copytree(export_dir, qdir)
    calib = None
    if mode == "static":
        rng = np.random.default_rng(1)
        calib = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)]
    quantize_onnx(qdir, mode, calib)
    return ExportedPredictor(qdir, num_threads=threads, precision="int8")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-int8", action="store_true", help="skip the int8 models")
    p.add_argument("--wait-quiet", type=float, default=120, metavar="S",
                   help="wait up to S seconds for the load average to fall to --threads")
    args = p.parse_args()
    load_before = wait_for_quiet(args.threads, args.wait_quiet)
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        eager, onnx = build_ours(Path(tmp) / "fp32", args.threads)
        int8 = {} if args.no_int8 else {
            mode: build_int8(Path(tmp) / "fp32", mode, args.threads)
            for mode in ("dynamic", "static")}
        hf_full, hf_forward = build_hf(argparse.Namespace())
        model = eager.model
        text_embed = model.vocabulary.get(eager.vocabulary_name)[0]
        x = model.preprocess([eager.preprocess(image)]).tensor
        runs = {
            "onnxruntime (full)": lambda: onnx(image),
            "eager PyTorch (full)": lambda: eager(image),
            "HF Mask2Former (fwd + semseg pp)": hf_full,
            "onnxruntime (network)": lambda: onnx.run_network(x),
            "eager PyTorch (network)": lambda: model.network(x, text_embed),
            "HF Mask2Former (forward)": hf_forward,
        }
        for mode, pred in int8.items():
            runs[f"onnxruntime int8 {mode} (full)"] = (lambda p=pred: p(image))
        times = {k: [] for k in runs}
        names = list(runs)
        with torch.inference_mode():
            for i in range(args.warmup + args.repeats):
                order = names[i % len(names):] + names[:i % len(names)]
                for name in order:
                    t0 = time.perf_counter()
                    runs[name]()
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU fp32, {args.threads} threads, 1x3x{SIZE}x{SIZE}, ResNet-50, 100 queries, "
          f"6 enc / 9 dec layers, {NUM_CLASSES} classes, semantic; interleaved, "
          f"{args.repeats} repeats after {args.warmup} warm-up")
    for k in names:
        print(f"{k:<36}{med[k]:>9.3f} s")
    hf = med["HF Mask2Former (fwd + semseg pp)"]
    print(f"full inference: onnxruntime / HF = {med['onnxruntime (full)'] / hf:.2f}x, "
          f"eager / HF = {med['eager PyTorch (full)'] / hf:.2f}x, onnxruntime / eager = "
          f"{med['onnxruntime (full)'] / med['eager PyTorch (full)']:.2f}x")
    print(f"network only: onnxruntime / HF forward = "
          f"{med['onnxruntime (network)'] / med['HF Mask2Former (forward)']:.2f}x, "
          f"onnxruntime / eager = "
          f"{med['onnxruntime (network)'] / med['eager PyTorch (network)']:.2f}x")
    for mode in ("dynamic", "static"):
        k = f"onnxruntime int8 {mode} (full)"
        if k in med:
            print(f"int8 {mode}: int8 / HF = {med[k] / hf:.2f}x, int8 / onnxruntime fp32 = "
                  f"{med[k] / med['onnxruntime (full)']:.2f}x")
    load_after = load_average()
    print(load_line(load_before, load_after, args.threads))
    print(verdict("onnxruntime fp32 / HF (full inference)", med["onnxruntime (full)"] / hf,
                  0.5, load_before, load_after, args.threads))
    print("RESULT " + json.dumps(med))


if __name__ == "__main__":
    main()
