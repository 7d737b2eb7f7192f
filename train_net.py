#!/usr/bin/env python
"""Trains and evaluates DaTaSeg with Detectron2.

    python train_net.py --config-file configs/quickstart.yaml
    python train_net.py --config-file configs/dataseg_r50.yaml --num-gpus 8
    python train_net.py --config-file configs/dataseg_r50.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume        # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file ... --datasets my_datasets.yaml DATASETS.TRAIN "('my_train',)"

Flags may come before or after the KEY VALUE overrides. Before the first iteration every train
and test dataset is loaded and checked (--skip-preflight to skip). Errors in the config, the
datasets files or the weights file are one line naming the file at fault.

--num-gpus N starts N processes per machine: NCCL on GPUs, gloo on CPUs (see docs/DISTRIBUTED.md).
Under torchrun, each of its processes is one rank (see docs/DISTRIBUTED.md):

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        --max-restarts 3 train_net.py --config-file configs/dataseg_r50.yaml --resume
"""
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _arguments():
    """dataseg/engine/arguments.py, loaded by its path: it imports only argparse, so --help and
    usage errors answer before torch, Detectron2 and dataseg load (importing the package would
    load them all: several seconds)."""
    spec = importlib.util.spec_from_file_location(
        "_dataseg_train_net_arguments", ROOT / "dataseg" / "engine" / "arguments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(args):
    from dataseg.engine import AtomicCheckpointer, DaTaSegTrainer, preflight, setup_cfg
    from dataseg.engine.trainer import torch_threads_from_env

    torch_threads_from_env()
    cfg = setup_cfg(args)
    if args.eval_only:
        if cfg.DATASETS.PREFLIGHT:
            preflight(cfg, keys=("TEST",))
        model = DaTaSegTrainer.build_model(cfg)
        AtomicCheckpointer.from_cfg(model, cfg, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return DaTaSegTrainer.test(cfg, model)
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = _arguments().parse_args(argv)
    # Runs from a checkout without installation too (paths from this file, not the cwd).
    sys.path.insert(0, str(ROOT))
    from torch.multiprocessing import ProcessRaisedException

    import dataseg  # noqa: F401  (registers the model and datasets)
    from dataseg.engine import ConfigError, launch

    try:
        launch(main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except ConfigError as e:
        sys.exit(f"train_net.py: config error: {e}")
    except _clear_errors() as e:
        sys.exit(f"train_net.py: error: {e}")
    except ProcessRaisedException as e:  # a spawned rank failed (--num-gpus > 1)
        last = str(e).strip().splitlines()[-1]
        for c in _error_classes():
            if last.startswith(f"{c.__module__}.{c.__name__}:"):
                what = "config error" if issubclass(c, ConfigError) else "error"
                sys.exit(f"train_net.py: {what}: {last.split(': ', 1)[-1]}")
        raise


def _clear_errors():
    """Errors whose message says all (file, key, record at fault): printed as one line."""
    from dataseg.data.loading import DatasetFormatError
    from dataseg.engine import CheckpointError, ConfigError, LaunchError

    return (ConfigError, CheckpointError, DatasetFormatError, LaunchError)


def _error_classes():
    seen, todo = [], list(_clear_errors())
    while todo:
        c = todo.pop()
        seen.append(c)
        todo.extend(c.__subclasses__())
    return seen


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
