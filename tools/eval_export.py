"""Evaluate exported models (ONNX fp32 and int8) the way ``train_net.py --eval-only`` does.

    python tools/eval_export.py --config-file output/quickstart/config.yaml --output DIR \\
        [--quantize {dynamic,static}] [--calibration-images 32] [--eager] \\
        [--datasets synth_sem_val ...] [--threads N] --opts MODEL.WEIGHTS model_final.pth

An export holds one vocabulary, so each test set (DATASETS.TEST, or --datasets) is exported
with its own vocabulary and task to DIR/<dataset>/ (tools/export_model.py's files; with
--quantize also model.int8.onnx, static calibrated on --calibration-images images of
DATASETS.TRAIN). Then Detectron2's test loaders and the project's evaluators (the ones
``--eval-only`` uses: ``DaTaSegTrainer.test``) run over every test set with onnxruntime doing
the network: the loader's resized image is padded as the eager model pads it, and the shared
post-processing gives the outputs at the original size. Summaries go to DIR/eval_fp32/,
DIR/eval_int8/ (and DIR/eval_eager/ with --eager, the eager model in the same run); a table
of the headline metrics side by side, with int8 - fp32 differences, is printed at the end.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLI = "eval_export.py"


class ExportedModel:
    """A callable over Detectron2 test-loader batches, as the eager model's eval ``forward``:
    picks the export of each input's "dataset_name" and returns ``postprocess_logits``
    outputs at the input's "height"/"width"."""

    def __init__(self, predictors: dict):
        self.predictors = predictors

    def __call__(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            p = self.predictors[x["dataset_name"]]
            images = p.pad([x["image"]])
            size = images.image_sizes[0]
            out_size = (x.get("height") or size[0], x.get("width") or size[1])
            outputs.append(p.inference(images, [out_size], task=x.get("task"))[0])
        return outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", required=True, help="folder for the exports and summaries")
    p.add_argument("--datasets", nargs="*", help="test sets (default DATASETS.TEST)")
    p.add_argument("--quantize", choices=("dynamic", "static"),
                   help="also export and evaluate int8")
    p.add_argument("--calibration-images", type=int, default=32, metavar="N")
    p.add_argument("--eager", action="store_true", help="evaluate the eager model too")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER)
    args = p.parse_args(argv)


    import dataseg  # noqa: F401
    from dataseg.engine import ConfigError
    from dataseg.engine.defaults import setup_cfg
    from dataseg.engine.evaluation import summarize_results
    from dataseg.engine.trainer import DaTaSegTrainer, torch_threads_from_env
    from dataseg.export import (
        ExportedPredictor,
        default_export_size,
        export_model,
        optimize_onnx,
        quantize_onnx,
        training_images,
    )
    from dataseg.modeling.dataset_specific import model_dataset_index
    from dataseg.predictor import DaTaSegPredictor

    torch_threads_from_env()
    out = Path(args.output)
    opts = list(args.opts) + ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out),
                              "MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL", "pytorch"]
    try:
        cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=opts,
                                           skip_preflight=True, datasets=[], eval_only=True,
                                           resume=False))
    except (ConfigError, KeyError, ValueError) as e:
        print(f"{CLI}: {e}", file=sys.stderr)
        return 2
    names = list(args.datasets or cfg.DATASETS.TEST)
    unknown = [n for n in names if n not in cfg.DATASETS.TEST]
    if unknown:
        print(f"{CLI}: --datasets {unknown} are not in DATASETS.TEST {list(cfg.DATASETS.TEST)}",
              file=sys.stderr)
        return 2
    cfg.defrost()
    cfg.DATASETS.TEST = tuple(names)
    cfg.freeze()
    model = None
    calib = (training_images(cfg, args.calibration_images) if args.quantize == "static"
             else None)
    for name in names:
        pred = DaTaSegPredictor(cfg, dataset=name, model=model)
        model = pred.model
        specific = model_dataset_index(model) is not None
        exp_dir = out / name
        export_model(pred, exp_dir, default_export_size(cfg, model.size_divisibility),
                     torchscript=False, dataset=name if specific else None)
        optimize_onnx(exp_dir)
        if args.quantize:
            quantize_onnx(exp_dir, args.quantize, calib)
        print(f"exported {name} ({pred.task}) to {exp_dir}")

    precisions = ["fp32"] + (["int8"] if args.quantize else [])
    results = {}
    for precision in precisions:
        wrapped = ExportedModel({n: ExportedPredictor(out / n, num_threads=args.threads,
                                                      dataset=n, precision=precision)
                                 for n in names})
        c = cfg.clone()
        c.defrost()
        c.OUTPUT_DIR = c.TEST.SUMMARY_DIR = str(out / f"eval_{precision}")
        results[precision] = DaTaSegTrainer.test(c, wrapped)
    if args.eager:
        c = cfg.clone()
        c.defrost()
        c.OUTPUT_DIR = c.TEST.SUMMARY_DIR = str(out / "eval_eager")
        model.eval()
        results["eager"] = DaTaSegTrainer.test(c, model)
        precisions = ["eager"] + precisions

    rows = {k: {(r["dataset"], r["metric"]): r["value"] for r in summarize_results(v)}
            for k, v in results.items()}
    header = "| dataset | metric | " + " | ".join(precisions)
    header += " | int8 - fp32 |" if args.quantize else " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for key in rows["fp32"]:
        vals = [rows[k].get(key, float("nan")) for k in precisions]
        line = f"| {key[0]} | {key[1]} | " + " | ".join(f"{v:.2f}" for v in vals)
        if args.quantize:
            line += f" | {rows['int8'].get(key, float('nan')) - rows['fp32'][key]:+.2f}"
        print(line + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
