"""train_net.py as a SLURM job through submitit, requeued with ``--resume`` when preempted or out
of time (``tools/submit_slurm.py`` is the command line; docs/DISTRIBUTED.md the recipes).

The job runs one task per rank (``--ntasks-per-node`` = processes per node). Each task calls
:class:`TrainNetJob`, which gives ``train_net.py`` the rank in torchrun's variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, from submitit's ``JobEnvironment``), so ``dataseg.engine.launch`` joins the
group exactly as under torchrun. The command line always holds ``--resume``: a first start
with an empty OUTPUT_DIR begins from MODEL.WEIGHTS, any later start continues from
``OUTPUT_DIR/last_checkpoint``.

Requeue follows submitit's checkpointing protocol: SLURM sends ``USR2`` (``--signal``) some
time before the end of the allocation or at preemption; submitit then calls
``TrainNetJob.checkpoint``, which returns the same command as a ``DelayedSubmission``, and
requeues the job (``scontrol requeue``; the local executor restarts the tasks). The weights
come from the last periodic checkpoint (``SOLVER.CHECKPOINT_PERIOD``): the iterations after it
are run again, with the same data and random streams, so nothing is lost but time.
"""
import os
import re
import runpy
import shlex
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["TrainNetJob", "rank_environment", "default_master_port", "TRAIN_NET"]

TRAIN_NET = Path(__file__).resolve().parents[2] / "train_net.py"


def default_master_port(job_id: str, restart_count: int = 0) -> int:
    """A port every task of a job derives alike from its id (and SLURM's requeue count, so a
    requeued job does not wait for the previous one's port): 20000-39999."""
    digits = int(re.sub(r"\D", "", str(job_id)) or 0)
    return 20000 + (digits + 7919 * int(restart_count)) % 20000


def rank_environment(job_env, master_port: Optional[int] = None) -> dict:
    """torchrun's variables for the task that ``job_env`` (a ``submitit.JobEnvironment``)
    describes: global and local rank, world and per-node sizes, and the first node of the job
    as the rendezvous address."""
    if job_env.num_tasks % job_env.num_nodes:
        raise ValueError(f"{job_env.num_tasks} tasks on {job_env.num_nodes} nodes: every node "
                         "must run the same number of tasks")
    if master_port is None:
        master_port = default_master_port(job_env.job_id,
                                          int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0))
    addr = job_env.hostnames[0] if job_env.num_nodes > 1 else "127.0.0.1"
    return {"RANK": str(job_env.global_rank), "WORLD_SIZE": str(job_env.num_tasks),
            "LOCAL_RANK": str(job_env.local_rank),
            "LOCAL_WORLD_SIZE": str(job_env.num_tasks // job_env.num_nodes),
            "MASTER_ADDR": addr, "MASTER_PORT": str(master_port),
            "DATASEG_LAUNCHER": "submitit"}


class TrainNetJob:
    """A submitit job: ``train_net.py`` with ``argv`` (``--resume`` is added when missing) in
    this task, as the rank submitit's ``JobEnvironment`` names.

    ``checkpoint()`` is submitit's requeue hook: it returns the same job, which resumes from
    ``OUTPUT_DIR/last_checkpoint``.
    """

    def __init__(self, argv: Sequence[str], master_port: Optional[int] = None,
                 train_net: str = str(TRAIN_NET)):
        self.argv = list(argv)
        if "--resume" not in self.argv:
            self.argv.insert(0, "--resume")
        self.master_port = master_port
        self.train_net = str(train_net)

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        os.environ.update(rank_environment(env, self.master_port))
        print(f"dataseg.slurm: job {env.job_id} task {env.global_rank} of {env.num_tasks} on "
              f"{env.hostname}: train_net.py {shlex.join(self.argv)}", flush=True)
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        # train_net.py's own cli: the same flags, overrides and one-line errors as by hand
        cli = runpy.run_path(self.train_net, run_name="dataseg_train_net")["cli"]
        cli(self.argv)

    def checkpoint(self, *args, **kwargs):
        import submitit

        print("dataseg.slurm: preempted or out of time: requeued, to continue with --resume "
              "from the last checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(
            TrainNetJob(self.argv, self.master_port, self.train_net))

    def __repr__(self):
        return f"TrainNetJob({self.argv!r})"
