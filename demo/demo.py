"""DaTaSeg demo: segment images or a video with any vocabulary, write drawings and files.

    python demo/demo.py --config-file configs/quickstart.yaml --input "imgs/*.jpg" \\
        --output out/ --vocab "cat; sofa|couch; grass:stuff" --task panoptic \\
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

Detectron2's demo options (--config-file, --input files/globs/folders, --output folder,
--video-input, --confidence-threshold, --opts KEY VALUE ... last) plus the vocabulary, in the
syntax of dataseg/vocabulary.py: --vocab TEXT (classes ';', synonyms '|' or ',', ':stuff' marks
stuff), --vocab-file FILE (one class a line), --dataset NAME (a registered dataset's
vocabulary) or none (the config's: MODEL.DATASEG.TEST.VOCABULARY_DATASET/_FILE/_CLASSES, else
the first of DATASETS.TEST); --task semantic|panoptic|instance.

--scale S draws at S times the image size (Detectron2 Visualizer's scale; default: 1, or an
integer upscale for images under 384 px so labels stay in proportion to the picture).

Per image the output folder gets (see dataseg/outputs.py): <name>.jpg (Visualizer drawing),
<name>_sem.png (semantic labels), panoptic/<name>.png + panoptic.json (COCO panoptic),
instances_results.json + coco_images.json (COCO instance results, RLE masks). A video gives
<name>.mp4 with the drawings. Images are read by dataseg.predictor.read_image (grey, RGBA,
palette and CMYK files become BGR; 16-bit ones are stretched to 8 bits). An input that cannot
be read is reported in one line and skipped;
the run ends with the count of skipped inputs (exit status 1 when any was skipped; 2 when the
vocabulary, dataset or config is unusable).
"""
import argparse
import glob
import logging
import os
import sys
from pathlib import Path

# torch, Detectron2, OpenCV and dataseg are imported after the arguments are parsed (main), so
# --help and usage errors answer at once (benchmarks/bench_cli_help.py).

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TASKS = ("semantic", "panoptic", "instance")


def get_parser():
    p = argparse.ArgumentParser(description="DaTaSeg demo (Detectron2 demo conventions)")
    p.add_argument("--config-file", default="configs/quickstart.yaml", metavar="FILE")
    p.add_argument("--input", nargs="+", help="image files, globs ('imgs/*.jpg') or folders")
    p.add_argument("--video-input", help="a video file")
    p.add_argument("--output", default="output/demo", help="output folder")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="minimum score of drawn instances")
    p.add_argument("--scale", type=float, default=None,
                   help="drawing scale (Visualizer's scale: the drawing is S times the image "
                        "size); default: 1, or the integer upscale that brings an image's "
                        "shorter side to 384 px (at most 2048 px long)")
    vocab = p.add_argument_group("vocabulary (at most one; default: the config's)")
    vocab.add_argument("--vocab", help='classes, e.g. "cat; sofa|couch; grass:stuff"')
    vocab.add_argument("--vocab-file",
                       help="one class a line, synonyms '|' or ',', ':stuff' marks, # comments")
    vocab.add_argument("--dataset", help="a registered dataset's vocabulary")
    vocab.add_argument("--modules-from", metavar="DATASET",
                       help="a model with dataset-specific (Table 5) modules: the dataset whose "
                       "copies serve --vocab/--vocab-file (required there)")
    p.add_argument("--task", choices=TASKS,
                   help="default: MODEL.DATASEG.TEST.TASK, the dataset's task, or panoptic")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                   help="config overrides KEY VALUE ... (last)")
    return p


def expand_inputs(patterns):
    """Files, globs and folders -> (list of image paths, list of (pattern, problem))."""
    paths, bad = [], []
    for pat in patterns:
        if os.path.isdir(pat):
            found = sorted(str(f) for f in Path(pat).iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                bad.append((pat, "folder has no images"))
            paths += found
        elif os.path.exists(pat):
            paths.append(pat)
        elif glob.has_magic(pat):
            found = sorted(f for f in glob.glob(os.path.expanduser(pat)) if os.path.isfile(f))
            if not found:
                bad.append((pat, "pattern matches no file"))
            paths += found
        else:
            bad.append((pat, "no such file or folder"))
    return paths, bad


def unique_stem(path: str, used: set) -> str:
    stem, n = Path(path).stem, 1
    out = stem
    while out in used:
        n += 1
        out = f"{stem}_{n}"
    used.add(out)
    return out


def run_video(predictor, path, output_dir, threshold, log, scale=None):
    import cv2
    import tqdm

    from dataseg.outputs import draw_predictions

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError("cannot open the video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = Path(output_dir) / f"{Path(path).stem}.mp4"
    tmp_path = out_path.with_name(f".{out_path.name}.tmp.mp4")
    writer = None
    try:
        for _ in tqdm.tqdm(range(frames) if frames else iter(int, 1), desc=Path(path).name):
            ok, frame = cap.read()
            if not ok:
                break
            vis = draw_predictions(frame[:, :, ::-1], predictor(frame), predictor.metadata,
                                   threshold, scale)[:, :, ::-1]
            if writer is None:
                h, w = vis.shape[:2]
                writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (w, h))
            writer.write(vis)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise OSError("the video has no readable frame")
    os.replace(tmp_path, out_path)
    log.info("wrote %s", out_path)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if not args.input and not args.video_input:
        print("demo.py: give --input and/or --video-input", file=sys.stderr)
        return 2
    if args.scale is not None and not args.scale > 0:
        print(f"demo.py: --scale must be > 0, got {args.scale}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tqdm
    from detectron2.utils.logger import setup_logger

    import dataseg  # noqa: F401  (registers DaTaSeg and the datasets)
    from dataseg.engine import CheckpointError, ConfigError
    from dataseg.engine.defaults import build_tool_cfg
    from dataseg.outputs import PredictionWriter
    from dataseg.predictor import (
        ImageReadError,
        VocabularyError,
        predictor_from_args,
        read_image,
    )

    log = setup_logger(name="dataseg.demo")
    logging.getLogger("fvcore").setLevel(logging.WARNING)
    try:
        cfg = build_tool_cfg(args.config_file, args.opts)
        predictor = predictor_from_args(cfg, args.vocab, args.vocab_file, args.dataset,
                                        args.task, modules_from=args.modules_from)
    except (ConfigError, CheckpointError, VocabularyError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"demo.py: {msg}", file=sys.stderr)
        return 2
    if predictor.load_report is not None:
        log.info("%s", predictor.load_report.summary())  # what MODEL.WEIGHTS loaded
    log.info("vocabulary: %d classes (%s), task %s", len(predictor.vocabulary),
             ", ".join(predictor.vocabulary.class_names[:20]), predictor.task)

    failed, total = [], 0
    if args.input:
        paths, bad = expand_inputs(args.input)
        failed += bad
        total += len(paths) + len(bad)
        writer = PredictionWriter(args.output, predictor.metadata, args.confidence_threshold,
                                  scale=args.scale)
        used = set()
        for path in tqdm.tqdm(paths, desc="images", unit="img"):
            try:
                image = read_image(path)
            except ImageReadError:
                failed.append((path, "cannot be read as an image"))  # reported once, below
                continue
            try:
                outputs = predictor(image)
                writer.write(unique_stem(path, used), image[:, :, ::-1], outputs,
                             source=str(path))
            except (RuntimeError, ValueError, OSError) as e:
                failed.append((path, f"{type(e).__name__}: {e}"))
        writer.close()
    if args.video_input:
        total += 1
        try:
            run_video(predictor, args.video_input, args.output, args.confidence_threshold, log,
                      args.scale)
        except (OSError, RuntimeError, ValueError) as e:
            failed.append((args.video_input, str(e)))
    for path, why in failed:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"demo.py: {total - len(failed)} of {total} inputs done, {len(failed)} skipped; "
          f"outputs in {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
