#!/usr/bin/env python
"""Submits train_net.py to SLURM through submitit; the job requeues itself when preempted or out
of time and continues from the last checkpoint (see docs/DISTRIBUTED.md).

    python tools/submit_slurm.py --config-file configs/dataseg_r50.yaml --nodes 2 \\
        --gpus-per-node 8 --partition learnlab --time 3-00:00:00 [train_net flags] [KEY VALUE ...]
    python tools/submit_slurm.py ... --dry-run       # print the sbatch script, submit nothing
    python tools/submit_slurm.py ... --cluster local # the same job on this machine (one node)

Options this script does not know (``--datasets FILE``, ``--skip-preflight``) and the config
overrides go to train_net.py, always with ``--resume``; they are checked, and the config read,
before anything is submitted. One task per rank: ``--tasks-per-node`` defaults to
``--gpus-per-node`` (1 without GPUs). The job's folder (``--job-dir``, default
``OUTPUT_DIR/slurm/<job id>``) holds the sbatch script, the pickled job and every task's log;
the training's own log is ``OUTPUT_DIR/log.txt`` (``log.txt.rank<N>`` for the other ranks).
"""
import argparse
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataseg.engine.defaults import ConfigError, build_cfg, parse_args  # noqa: E402
from dataseg.engine.slurm import TrainNetJob  # noqa: E402

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """SLURM's time-limit formats in whole minutes (seconds round up): ``MINUTES``,
    ``MINUTES:SECONDS``, ``HOURS:MINUTES:SECONDS``, ``DAYS-HOURS``, ``DAYS-HOURS:MINUTES``,
    ``DAYS-HOURS:MINUTES:SECONDS``."""
    m = _TIME.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time limit: expected minutes, or D-HH:MM:SS, HH:MM:SS, D-HH")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is None and b is None:
        total = a
    elif days is None and c is None:
        total = a + (b > 0)
    elif days is None:
        total = a * 60 + b + (c > 0)
    else:
        total = days * 1440 + a * 60 + (b or 0) + ((c or 0) > 0)
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the time limit must be positive")
    return total


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other options and KEY VALUE overrides are passed to train_net.py.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--nodes", type=_positive, default=1)
    p.add_argument("--gpus-per-node", type=_non_negative, default=8)
    p.add_argument("--tasks-per-node", type=_positive, default=None,
                   help="processes (ranks) per node; default: --gpus-per-node, or 1")
    p.add_argument("--cpus-per-task", type=_positive, default=None)
    p.add_argument("--mem-gb", type=float, default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--constraint", default=None)
    p.add_argument("--time", type=parse_time, default=parse_time("3-00:00:00"),
                   help="time limit per allocation: minutes or D-HH:MM:SS (default 3 days)")
    p.add_argument("--signal-delay", type=_positive, default=120, metavar="SECONDS",
                   help="USR2 comes this long before the time limit (default 120)")
    p.add_argument("--max-requeues", type=_non_negative, default=20,
                   help="requeues after a time-out, at most (preemptions are not counted)")
    p.add_argument("--job-name", default="dataseg")
    p.add_argument("--job-dir", default=None,
                   help="submitit's folder (default OUTPUT_DIR/slurm); one subfolder per job")
    p.add_argument("--master-port", type=_positive, default=None,
                   help="rendezvous port on the first node (default: from the job id)")
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="local: submitit's local executor on this machine (one node)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the sbatch script and the train_net.py command; submit nothing")
    return p


def _fail(message):
    sys.exit(f"submit_slurm.py: error: {message}")


def train_net_argv(args, extra):
    """train_net.py's command line for the job (checked here), and the config it reads."""
    argv = ["--config-file", args.config_file, *extra]
    if "--resume" not in argv:
        argv.insert(0, "--resume")
    targs = parse_args(argv)  # unknown flags: one-line usage error, as train_net.py's
    if (targs.num_gpus, targs.num_machines, targs.machine_rank, targs.dist_url) != (
            1, 1, 0, "auto"):
        _fail("--num-gpus, --num-machines, --machine-rank and --dist-url are not used in a "
              "SLURM job: --nodes and --gpus-per-node (or --tasks-per-node) set the processes")
    quiet = logging.getLogger("dataseg.engine.defaults")
    level, quiet.level = quiet.level, logging.ERROR  # not "no CUDA here" on a login node
    try:
        cfg = build_cfg(targs.config_file, targs.opts or [])
    except ConfigError as e:
        _fail(f"config error: {e}")
    finally:
        quiet.level = level
    return argv, cfg


def slurm_parameters(args, tasks_per_node):
    """The sbatch parameters (submitit's SlurmExecutor names)."""
    params = {"job_name": args.job_name, "nodes": args.nodes, "ntasks_per_node": tasks_per_node,
              "time": args.time, "signal_delay_s": args.signal_delay,
              "additional_parameters": {"requeue": True}}
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    optional = {"cpus_per_task": args.cpus_per_task, "partition": args.partition,
                "account": args.account, "qos": args.qos, "constraint": args.constraint}
    params.update({k: v for k, v in optional.items() if v is not None})
    if args.mem_gb is not None:
        params["mem"] = f"{int(args.mem_gb)}GB" if args.mem_gb == int(args.mem_gb) else \
            f"{int(args.mem_gb * 1024)}MB"
    return params


def main(argv=None):
    """Submits (or, with --dry-run, prints) the job; returns the submitit Job (None for a dry
    run)."""
    args, extra = build_parser().parse_known_args(argv)
    train_argv, cfg = train_net_argv(args, extra)
    tasks = args.tasks_per_node or max(1, args.gpus_per_node)
    output_dir = Path(cfg.OUTPUT_DIR).resolve()
    job_dir = Path(args.job_dir).resolve() if args.job_dir else output_dir / "slurm"
    folder = job_dir / "%j"
    job = TrainNetJob(train_argv, master_port=args.master_port)
    # the job imports dataseg from this checkout, installed or not
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    import submitit

    if args.cluster == "local":
        if args.nodes != 1:
            _fail(f"--cluster local runs on this machine only: --nodes 1, not {args.nodes}")
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.time, tasks_per_node=tasks,
                                   gpus_per_node=args.gpus_per_node,
                                   signal_delay_s=args.signal_delay)
    else:
        params = slurm_parameters(args, tasks)
        if args.dry_run:
            from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes

            command = (f"{shlex.quote(sys.executable)} -u -m submitit.core._submit "
                       f"{shlex.quote(str(folder))}")
            print(_make_sbatch_string(command=command, folder=folder, **params))
            print(f"# each task runs: train_net.py {shlex.join(train_argv)}")
            return None
        if shutil.which("sbatch") is None:
            _fail("sbatch not found: this machine is not a SLURM login node (--dry-run prints "
                  "the job script; --cluster local runs the job here)")
        executor = submitit.SlurmExecutor(folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(**params)
    if args.dry_run:
        print(f"# --cluster local, {tasks} task(s): train_net.py {shlex.join(train_argv)}")
        return None
    submitted = executor.submit(job)
    print(f"submitted job {submitted.job_id} ({args.nodes} node(s) x {tasks} task(s), "
          f"{args.cluster}): logs in {submitted.paths.folder}, checkpoints in {output_dir}",
          flush=True)
    return submitted


if __name__ == "__main__":
    main()
