"""Multi-process launcher: Detectron2's ``launch`` semantics with a backend that fits the machine.

Detectron2 0.6's ``launch`` always uses NCCL, which needs GPUs. Here the backend is NCCL when
CUDA is available and gloo otherwise (``DATASEG_DIST_BACKEND`` overrides), so the same
``--num-gpus N --num-machines M --machine-rank R --dist-url URL`` options start N processes per
machine on GPUs or on CPUs.

``DATASEG_FORCE_DISTRIBUTED=1`` runs even a single process through a spawned worker and
``torch.distributed`` (a one-GPU NCCL run checks the multi-GPU set-up on a one-GPU machine).

A process started by ``torchrun`` (or by ``tools/submit_slurm.py``'s SLURM job, which sets the
same variables) already has its rank: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` in its environment. ``launch`` then
starts nothing; this process joins the group by ``env://`` (gloo or NCCL as above), builds
Detectron2's per-machine group, and runs ``main_func`` itself. See docs/DISTRIBUTED.md.

Every rank prints one line saying how it joined: rank, world size, backend, address, launcher
(``launch``, ``torchrun``, ``submitit`` or ``env``), local rank and process id.
"""
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from dataseg.engine.d2compat import create_local_process_group

__all__ = ["launch", "default_backend", "default_timeout", "find_free_port", "LaunchError",
           "EnvRendezvous", "rendezvous_from_env"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


class LaunchError(RuntimeError):
    """Processes that cannot be started or joined as asked; the message says why (one line)."""


# The variables torchrun sets for each worker (and tools/submit_slurm.py's jobs set too).
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class EnvRendezvous:
    """Where this process belongs, as its launcher (torchrun, a SLURM job) set it in the
    environment."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def url(self):
        return f"env://{self.master_addr}:{self.master_port}"


def rendezvous_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[EnvRendezvous]:
    """The rank this process was given by torchrun or a SLURM job (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), or None when none of
    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` is set (a plain ``python train_net.py``).

    The launcher is ``torchrun`` where ``TORCHELASTIC_RUN_ID`` is set, else
    ``DATASEG_LAUNCHER`` (``submitit`` in tools/submit_slurm.py's jobs), else ``env``. Missing
    or inconsistent values are a one-line :class:`LaunchError`.
    """
    env = os.environ if environ is None else environ
    if not any(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in env
                else env.get("DATASEG_LAUNCHER") or "env")
    missing = [k for k in _ENV_KEYS if not env.get(k)]
    if missing:
        raise LaunchError(
            f"started with {', '.join(k for k in _ENV_KEYS if env.get(k))} set but not "
            f"{', '.join(missing)}: run under torchrun (which sets them all), or set them all, "
            "or unset RANK/WORLD_SIZE/LOCAL_RANK to use --num-gpus")
    values = {}
    for k in _ENV_KEYS[:4] + ("MASTER_PORT",):
        try:
            values[k] = int(env[k])
        except ValueError:
            raise LaunchError(f"environment variable {k}={env[k]!r} is not an integer") from None
    rank, world, local_rank, local_world = (values[k] for k in _ENV_KEYS[:4])
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world):
        raise LaunchError(f"inconsistent ranks in the environment: RANK={rank} "
                          f"WORLD_SIZE={world} LOCAL_RANK={local_rank} "
                          f"LOCAL_WORLD_SIZE={local_world}")
    if world % local_world or rank % local_world != local_rank:
        # Detectron2's per-machine group takes machine m to hold ranks m*L .. m*L+L-1
        raise LaunchError(
            f"RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world} "
            f"LOCAL_WORLD_SIZE={local_world}: every machine must run the same number of "
            "processes, with consecutive ranks (torchrun: the same --nproc-per-node on every "
            "node)")
    return EnvRendezvous(launcher, rank, world, local_rank, local_world, env["MASTER_ADDR"],
                         values["MASTER_PORT"])


def default_backend():
    """NCCL on GPUs, gloo on CPUs; ``DATASEG_DIST_BACKEND`` overrides."""
    forced = os.environ.get("DATASEG_DIST_BACKEND")
    if forced:
        return forced
    return "nccl" if torch.cuda.is_available() else "gloo"


def default_timeout(environ: Optional[Mapping[str, str]] = None) -> timedelta:
    """How long a collective may wait for the other ranks before the run fails: 30 minutes,
    or ``DATASEG_DIST_TIMEOUT_MIN`` minutes (a slow first evaluation or a checkpoint on a slow
    shared filesystem may need more; a hung rank is found sooner with less)."""
    env = os.environ if environ is None else environ
    text = env.get("DATASEG_DIST_TIMEOUT_MIN")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1
    if not minutes > 0:
        raise LaunchError(f"DATASEG_DIST_TIMEOUT_MIN={text!r}: expected a positive number of "
                          "minutes")
    return timedelta(minutes=minutes)


def find_free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func, num_processes_per_machine, num_machines=1, machine_rank=0, dist_url=None,
           args=(), timeout=None, backend=None):
    """Runs ``main_func(*args)`` in ``num_processes_per_machine * num_machines`` processes.

    ``dist_url`` "auto" (or None) picks a free local port (single machine only). ``timeout``
    (of the process group's collectives) defaults to :func:`default_timeout`.
    With one process in total, ``main_func`` runs in this process without torch.distributed,
    unless ``DATASEG_FORCE_DISTRIBUTED=1``.

    Under torchrun (see :func:`rendezvous_from_env`) this process is one of its ranks: it joins
    the group and runs ``main_func`` here; ``--num-gpus``, ``--num-machines`` and
    ``--machine-rank`` must then be left at 1, 1, 0 (torchrun's ``--nproc-per-node``,
    ``--nnodes`` and ``--node-rank`` say it) and ``dist_url`` is not used.
    """
    timeout = timeout if timeout is not None else default_timeout()
    rendezvous = rendezvous_from_env()
    if rendezvous is not None:
        if (num_processes_per_machine, num_machines, machine_rank) != (1, 1, 0):
            raise LaunchError(
                f"started by {rendezvous.launcher} as rank {rendezvous.rank} of "
                f"{rendezvous.world_size}, but also asked for --num-gpus "
                f"{num_processes_per_machine} --num-machines {num_machines} --machine-rank "
                f"{machine_rank}: leave those out (torchrun's --nproc-per-node, --nnodes and "
                "--node-rank set the processes)")
        return _run_in_env_group(main_func, rendezvous, args, timeout,
                                 backend or default_backend())
    world_size = num_machines * num_processes_per_machine
    if world_size <= 1 and os.environ.get("DATASEG_FORCE_DISTRIBUTED", "0") != "1":
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    backend = backend or default_backend()
    _check_gpus(backend, num_processes_per_machine)
    mp.start_processes(
        _worker, nprocs=num_processes_per_machine, start_method="spawn", daemon=False,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args,
              timeout, backend),
    )


def _worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args,
            timeout, backend):
    global_rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception as e:
        logging.getLogger(__name__).error("process group init failed at %s", dist_url)
        raise RuntimeError(f"rank {global_rank}: cannot join the process group at {dist_url} "
                           f"with backend {backend}: {e}") from e
    # Detectron2's comm helpers (get_local_rank etc.) read this group.
    create_local_process_group(per_machine)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    _announce("launch", global_rank, world_size, backend, dist_url, local_rank, per_machine)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _check_gpus(backend, per_machine):
    if backend == "nccl" and torch.cuda.device_count() < per_machine:
        raise LaunchError(
            f"{per_machine} processes per machine with NCCL need as many GPUs, "
            f"found {torch.cuda.device_count()}; set DATASEG_DIST_BACKEND=gloo to run on CPUs")


def _announce(launcher, rank, world_size, backend, url, local_rank, local_size):
    # printed (the loggers are set up later, inside main_func), in one write: the ranks share
    # torchrun's stdout, and print's two writes (text, newline) of two ranks may interleave
    sys.stdout.write(f"dataseg.launch: rank {rank} of {world_size} joined the {backend} process "
                     f"group at {url} (launcher {launcher}, local rank {local_rank} of "
                     f"{local_size}, pid {os.getpid()})\n")
    sys.stdout.flush()


def _restart_store(r, timeout):
    """Under torchrun, a store of keys for this attempt only (``TORCHELASTIC_RESTART_COUNT``).

    With ``--master-addr/--master-port`` (static rendezvous) torchrun's agent keeps one store
    for all attempts, and plain ``env://`` reads it without a per-attempt prefix: the workers
    restarted by ``--max-restarts`` could find the dead workers' addresses there and fail to
    connect. None outside torchrun (``env://`` as usual)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if r.launcher != "torchrun" or attempt is None:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(r.master_addr, r.master_port, r.world_size,
                          is_master=not agent_store and r.rank == 0, timeout=timeout,
                          multi_tenant=True)
    return dist.PrefixStore(f"dataseg/attempt_{attempt}", store)


def _run_in_env_group(main_func, rendezvous, args, timeout, backend):
    """Joins the process group of torchrun's (or a SLURM job's) ranks here, then runs
    ``main_func(*args)``."""
    r = rendezvous
    _check_gpus(backend, r.local_world_size)
    if backend == "nccl":
        torch.cuda.set_device(r.local_rank)
    try:
        store = _restart_store(r, timeout)
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=store, rank=r.rank,
                                    world_size=r.world_size, timeout=timeout)
    except Exception as e:
        raise LaunchError(f"rank {r.rank} of {r.world_size} ({r.launcher}): cannot join the "
                          f"{backend} process group at {r.url}: {e}") from e
    try:
        create_local_process_group(r.local_world_size)
        comm.synchronize()
        _announce(r.launcher, r.rank, r.world_size, backend, r.url, r.local_rank,
                  r.local_world_size)
        return main_func(*args)
    finally:
        dist.destroy_process_group()
