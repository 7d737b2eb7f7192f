#!/usr/bin/env python
"""Trains and evaluates DaTaSeg with Detectron2.

    python train_net.py --config-file configs/quickstart.yaml
    python train_net.py --config-file configs/dataseg_r50.yaml --num-gpus 8
    python train_net.py --config-file configs/dataseg_r50.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume        # continue from OUTPUT_DIR/last_checkpoint

--num-gpus N starts N processes per machine: NCCL on GPUs, gloo on CPUs (see README).
"""
import os
import sys
from pathlib import Path

# Runs from a checkout without installation too (paths from this file, not the cwd).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataseg  # noqa: E402,F401  (registers the model and datasets)
from dataseg.engine import (  # noqa: E402
    AtomicCheckpointer,
    ConfigError,
    DaTaSegTrainer,
    default_argument_parser,
    launch,
    setup_cfg,
)
from dataseg.engine.trainer import torch_threads_from_env  # noqa: E402


def main(args):
    torch_threads_from_env()
    cfg = setup_cfg(args)
    if args.eval_only:
        model = DaTaSegTrainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return DaTaSegTrainer.test(cfg, model)
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except ConfigError as e:
        sys.exit(f"train_net.py: config error: {e}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
