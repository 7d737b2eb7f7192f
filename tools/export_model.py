"""Export DaTaSeg for one fixed vocabulary to ONNX (and TorchScript), then check it.

    python tools/export_model.py --config-file configs/quickstart.yaml --output export/ \\
        --dataset synth_pan_val [--task panoptic] [--size 128 128] \\
        [--quantize {dynamic,static}] [--calibration-images 32] \\
        [--check-images "datasets/dataseg_synthetic/*/val/images/*.png"] \\
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

Writes DIR/model.onnx (inputs "images" (1, 3, H, W) float32 normalised and zero-padded, H and
W any multiples of the size divisibility; outputs "pred_logits" (1, Q, K+1) and "pred_masks"
(1, Q, H/4, W/4); traced at --size, default the square MIN_SIZE_TEST), DIR/model.opt.onnx
(the same graph with onnxruntime's portable optimisations applied), DIR/model.ts
(TorchScript, when tracing works) and DIR/model.json; with --quantize, DIR/model.int8.onnx
(onnxruntime.quantization: "dynamic" int8 weights of the matrix products, or "static" int8
weights and activations calibrated on --calibration-images images of the training sets).
Then checks the export end to end against the eager predictor (each side resizing, padding and
post-processing the original image itself) on --check-images, or on the first test image of
the model's datasets at several aspect ratios (square, 3:2, 2:3, 4:3 landscape, a tall strip),
and prints the network's max abs differences and the agreement of the outputs (semantic argmax,
panoptic segments, instance classes); for an int8 model, the same against fp32-eager.
Use it from Python with ``dataseg.export.ExportedPredictor(DIR[, precision="int8"])``.

A model with dataset-specific modules (MODEL.DATASEG.DATASET_SPECIFIC, paper Table 5) needs
--dataset: that dataset's vocabulary and its copies of the modules are baked in (use it with
``ExportedPredictor(DIR, dataset=NAME)``).
"""
import argparse
import glob
import json
import sys
from pathlib import Path


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default="configs/quickstart.yaml", metavar="FILE")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--vocab", help='classes (syntax: dataseg/vocabulary.py), e.g. '
                   '"cat; sofa|couch; grass:stuff"')
    p.add_argument("--vocab-file", help="a vocabulary file: one class a line")
    p.add_argument("--dataset", help="a registered dataset's vocabulary (and, for a model "
                   "with dataset-specific modules, whose modules to bake in: required there)")
    p.add_argument("--task", choices=("semantic", "panoptic", "instance"))
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size the graph is traced at; the graph takes any multiple of "
                   "the size divisibility (default: square MIN_SIZE_TEST)")
    p.add_argument("--quantize", choices=("dynamic", "static"),  # dataseg.export.QUANTIZE_MODES
                   help="also write an int8 model.int8.onnx: dynamic (int8 weights; within "
                   "0.53 points of fp32 on the quickstart) or static (activations too, "
                   "calibrated on --calibration-images images of DATASETS.TRAIN; lost 4-19 "
                   "points on the quickstart)")
    p.add_argument("--calibration-images", type=int, default=32, metavar="N",
                   help="images of the training sets for --quantize static (default 32)")
    p.add_argument("--no-torchscript", action="store_true")
    p.add_argument("--check-images", nargs="*", default=[],
                   help="images or globs to compare ONNX vs eager on")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    # torch, Detectron2 and dataseg are imported after the arguments are parsed, so --help and
    # usage errors answer at once (benchmarks/bench_cli_help.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import dataseg  # noqa: F401
    from dataseg.engine import CheckpointError, ConfigError
    from dataseg.engine.defaults import build_tool_cfg
    from dataseg.export import (
        ExportedPredictor,
        aspect_ratio_variants,
        compare_with_eager,
        default_export_size,
        export_model,
        optimize_onnx,
        quantize_onnx,
        training_images,
    )
    from dataseg.modeling.dataset_specific import DatasetIndex, uses_dataset_specific
    from dataseg.predictor import ImageReadError, VocabularyError, predictor_from_args, read_image

    try:
        cfg = build_tool_cfg(args.config_file, args.opts)
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.DATASEG.PIXEL_DECODER.DEFORM_ATTN_IMPL = "pytorch"
        if uses_dataset_specific(cfg):  # checked before the (slow) model build
            index = DatasetIndex.from_cfg(cfg)
            if args.vocab is not None or args.vocab_file is not None:
                raise ValueError("this model has dataset-specific modules (MODEL.DATASEG."
                                 "DATASET_SPECIFIC): give --dataset NAME instead of --vocab/"
                                 "--vocab-file (its vocabulary and modules are baked in); the "
                                 f"model's datasets: {', '.join(index.names())}")
            index.require(args.dataset, "--dataset")
        predictor = predictor_from_args(cfg, args.vocab, args.vocab_file, args.dataset,
                                        args.task)
    except (ConfigError, CheckpointError, VocabularyError, KeyError, ValueError) as e:
        print(f"export_model.py: {e.args[0] if isinstance(e, KeyError) and e.args else e}",
              file=sys.stderr)
        return 2
    if predictor.load_report is not None:
        print(predictor.load_report.summary())  # what MODEL.WEIGHTS loaded
    size = args.size or default_export_size(cfg, predictor.model.size_divisibility)
    result = export_model(predictor, args.output, size, torchscript=not args.no_torchscript,
                          dataset=args.dataset)
    specific = json.loads(result["json"].read_text())["dataset_specific"]
    dyn = ("any HxW multiple of " + str(predictor.model.size_divisibility)
           if result["dynamic_size"] else f"fixed {size[0]}x{size[1]}")
    print(f"wrote {result['onnx']} (input 1x3xHxW: {dyn}; "
          f"{len(predictor.vocabulary)} classes, task {predictor.task})")
    if specific:
        print(f"dataset-specific modules of {specific['dataset']} baked in (the copies of "
              f"{specific['owner']}); load with ExportedPredictor(DIR, "
              f"dataset='{specific['dataset']}')")
    if result["torchscript"]:
        print(f"wrote {result['torchscript']}")
    elif not args.no_torchscript:
        print(f"TorchScript not written: {result['torchscript_error']}")

    optimize_onnx(args.output)
    int8 = None
    if args.quantize:
        calib = (training_images(cfg, args.calibration_images) if args.quantize == "static"
                 else None)
        int8 = quantize_onnx(args.output, args.quantize, calib)
        print(f"wrote {int8} (int8, {args.quantize}"
              + (f", calibrated on {len(calib)} training images)" if calib else ")"))

    paths = sorted({f for pat in args.check_images for f in glob.glob(pat)})
    images = []
    for f in paths:
        try:
            images.append(read_image(f))
        except ImageReadError as e:
            print(f"export_model.py: skipped {e}", file=sys.stderr)
    if not images:
        if args.check_images:
            print("export_model.py: no readable --check-images; checking on the test images "
                  "at several aspect ratios", file=sys.stderr)
        images = aspect_ratio_variants(cfg, size)
    for precision in ("fp32", "int8") if int8 else ("fp32",):
        stats = compare_with_eager(predictor, ExportedPredictor(
            args.output, dataset=args.dataset, precision=precision), images)
        stats["images"] = len(images)
        name = "onnxruntime" if precision == "fp32" else "onnxruntime int8"
        print(f"{name} vs eager, end to end: " + json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
