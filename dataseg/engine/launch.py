"""Multi-process launcher: Detectron2's ``launch`` semantics with a backend that fits the machine.

Detectron2 0.6's ``launch`` always uses NCCL, which needs GPUs. Here the backend is NCCL when
CUDA is available and gloo otherwise (``DATASEG_DIST_BACKEND`` overrides), so the same
``--num-gpus N --num-machines M --machine-rank R --dist-url URL`` options start N processes per
machine on GPUs or on CPUs.

``DATASEG_FORCE_DISTRIBUTED=1`` runs even a single process through a spawned worker and
``torch.distributed`` (a one-GPU NCCL run checks the multi-GPU set-up on a one-GPU machine).
"""
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from dataseg.engine.d2compat import create_local_process_group

__all__ = ["launch", "default_backend", "find_free_port"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def default_backend():
    """NCCL on GPUs, gloo on CPUs; ``DATASEG_DIST_BACKEND`` overrides."""
    forced = os.environ.get("DATASEG_DIST_BACKEND")
    if forced:
        return forced
    return "nccl" if torch.cuda.is_available() else "gloo"


def find_free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func, num_processes_per_machine, num_machines=1, machine_rank=0, dist_url=None,
           args=(), timeout=DEFAULT_TIMEOUT, backend=None):
    """Runs ``main_func(*args)`` in ``num_processes_per_machine * num_machines`` processes.

    ``dist_url`` "auto" (or None) picks a free local port (single machine only).
    With one process in total, ``main_func`` runs in this process without torch.distributed,
    unless ``DATASEG_FORCE_DISTRIBUTED=1``.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size <= 1 and os.environ.get("DATASEG_FORCE_DISTRIBUTED", "0") != "1":
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < num_processes_per_machine:
        raise RuntimeError(
            f"{num_processes_per_machine} processes per machine with NCCL need as many GPUs, "
            f"found {torch.cuda.device_count()}; set DATASEG_DIST_BACKEND=gloo to run on CPUs")
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
    # printed: the loggers are set up later, inside main_func
    print(f"dataseg.launch: rank {global_rank} of {world_size} joined the {backend} process "
          f"group at {dist_url}", flush=True)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
