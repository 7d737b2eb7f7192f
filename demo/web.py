#!/usr/bin/env python
"""DaTaSeg web demo: a page to segment an image with any vocabulary, and a JSON API.

    python demo/web.py --config-file configs/quickstart.yaml \
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

then open http://127.0.0.1:7860. ``POST /segment`` (multipart: image, vocab or dataset, task)
answers JSON; see the README's "Inference" section. Listens on 127.0.0.1 unless ``--host``
says otherwise; the model is loaded once and requests run one at a time.
"""
import argparse
import logging
import socket
import sys
from pathlib import Path

# uvicorn, torch, Detectron2 and dataseg are imported after the arguments are parsed (main), so
# --help and usage errors answer at once (benchmarks/bench_cli_help.py).


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="a DaTaSeg config")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 makes the demo reachable from other "
                        "machines: it has no authentication)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="instance results below this score are not shown")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="larger uploads are refused (413)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="larger images are refused before decoding (413)")
    p.add_argument("--max-side", type=int, default=1600,
                   help="images with a longer side are downscaled to it")
    p.add_argument("--max-classes", type=int, default=300,
                   help="vocabularies with more classes are refused (400)")
    p.add_argument("--max-vocab-chars", type=int, default=10000,
                   help="longer typed vocabularies are refused (400)")
    p.add_argument("--max-queue", type=int, default=1,
                   help="requests that may wait behind the running one; more get 'busy' (503)")
    p.add_argument("--examples", nargs="+", default=None, metavar="PATH",
                   help="images or folders offered as examples on the page (default: the "
                        "images of the config's DATASETS.TEST that exist on disk)")
    p.add_argument("--modules-from", metavar="DATASET",
                   help="a model with dataset-specific (Table 5) modules: the dataset whose "
                   "copies serve typed vocabularies (required there)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                   help="config overrides as KEY VALUE pairs, last on the command line")
    return p


def _examples(paths):
    from dataseg.web.service import IMAGE_SUFFIXES

    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise SystemExit(f"--examples: {p} is neither an image nor a folder")
    return found


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {e} (choose another --port)") from e
    return sock


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not Path(args.config_file).is_file():
        raise SystemExit(f"error: config file not found: {args.config_file}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import uvicorn
    from detectron2.utils.logger import setup_logger

    from dataseg.engine import CheckpointError
    from dataseg.engine.defaults import ConfigError, build_tool_cfg
    from dataseg.web.app import create_app
    from dataseg.web.service import Limits, SegmentationService, example_images_from_cfg

    setup_logger(name="dataseg")
    setup_logger(name="detectron2", abbrev_name="d2")
    log = logging.getLogger("dataseg.web")
    try:
        # the datasets the config declares, as train_net.py registers them (the examples are
        # their images: the synthetic world is generated on first use)
        cfg = build_tool_cfg(args.config_file, args.opts, generate=True)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not Path(weights).is_file():
        raise SystemExit(f"error: MODEL.WEIGHTS file not found: {weights} (train one first, e.g. "
                         "python train_net.py --config-file configs/quickstart.yaml)")
    if not weights:
        log.warning("no MODEL.WEIGHTS given: the model is untrained and its output is noise")
    cfg.freeze()
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20),
                    max_image_pixels=int(args.max_megapixels * 1e6), max_side=args.max_side,
                    max_vocab_chars=args.max_vocab_chars, max_classes=args.max_classes,
                    max_queue=args.max_queue)
    examples = _examples(args.examples) if args.examples else example_images_from_cfg(cfg)
    try:
        service = SegmentationService(cfg, limits, args.confidence_threshold, examples,
                                      modules_from=args.modules_from)
    except (ValueError, CheckpointError) as e:  # e.g. a dataset-specific model without
        raise SystemExit(f"error: {e}") from None  # --modules-from; a checkpoint that does not fit
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"DaTaSeg demo: open http://{shown}:{port} (Ctrl+C stops it)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning",
                                           timeout_graceful_shutdown=2))
    server.run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
