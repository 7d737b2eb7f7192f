"""Profiles training steps of any config with torch.profiler: where a step's time goes.

Builds the config's trainer (model, data loader, optimizer, AMP as configured) exactly as
train_net.py does, runs ``--warmup`` steps, then profiles ``--steps`` steps and prints the
median wall time per step and the operators with the largest self CPU time (and self CUDA time
on a GPU). Options after the flags are config overrides, as for train_net.py.

    python tools/profile_train_step.py --config-file configs/quickstart.yaml --steps 5
    python tools/profile_train_step.py --config-file configs/dataseg_r50.yaml --steps 10 \\
        MODEL.DEVICE cuda ...
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataseg.engine.defaults import default_argument_parser, parse_args, setup_cfg  # noqa: E402
from dataseg.engine.trainer import DaTaSegTrainer  # noqa: E402


def main(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25)
    args = parse_args(argv, parser)
    cfg = setup_cfg(args)
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    step = trainer.run_step  # DefaultTrainer's: one step of its SimpleTrainer/AMPTrainer
    cuda = next(trainer.model.parameters()).is_cuda

    def timed():
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with EventStorage(0):
        for _ in range(args.warmup):
            timed()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            times = [timed() for _ in range(args.steps)]
    print(f"{args.steps} profiled steps after {args.warmup} warm-up: median "
          f"{statistics.median(times):.4f} s/step (min {min(times):.4f}); "
          f"device {'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if cuda:
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
