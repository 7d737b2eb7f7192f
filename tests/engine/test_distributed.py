"""Beyond one machine (issue 24): torchrun as a launcher, restarts that lose nothing, SLURM
through submitit, and two "machines" simulated on this one (gloo processes on 127.0.0.1).

The multi-process tests run the real ``train_net.py`` under the real launchers (Detectron2-style
``--num-machines``, ``python -m torch.distributed.run``, submitit's local executor) on a tiny
config, and compare final weights with those of the two-machine ``--num-machines`` run of the
same seed (``reference``): every launcher, and every interrupted-then-resumed run, must end
with the same bytes.
"""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from engine_helpers import QUICKSTART, REPO, tiny_opts

from dataseg.engine import LaunchError, build_cfg
from dataseg.engine.defaults import config_differences, warn_if_config_changed
from dataseg.engine.launch import (
    default_timeout,
    find_free_port,
    launch,
    rendezvous_from_env,
)
from dataseg.engine.slurm import TrainNetJob, default_master_port, rank_environment

# 10 iterations, checkpoints after iterations 2, 5, 8 and at the end; one test set evaluated.
RUN = dict(max_iter=10, test=("synth_sem_val",), batch=2, **{"SOLVER.CHECKPOINT_PERIOD": 3})
RUN_TIMEOUT = 240  # seconds, per training run of two processes on a loaded 2-core machine
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RUN_ID", "DATASEG_LAUNCHER", "GROUP_RANK")
_JOINED = re.compile(r"dataseg\.launch: rank (\d+) of (\d+) joined the (\w+) process group at "
                     r"(\S+) \(launcher (\w+), local rank (\d+) of (\d+), pid (\d+)\)")


def _env(**extra):
    """The children's environment: this checkout importable, one thread, gloo on the CPU."""
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARS}
    env.update(DATASEG_NUM_THREADS="1", OMP_NUM_THREADS="1", DATASEG_DIST_BACKEND="gloo",
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                          if p))
    env.update(extra)
    return env


class _Proc:
    """A child process whose output goes to a file; killed with its group if left running."""

    def __init__(self, cmd, log: Path, env=None):
        self.cmd, self.log = cmd, log
        self._out = open(log, "w")
        self.popen = subprocess.Popen(cmd, cwd=REPO, env=env or _env(), stdout=self._out,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def text(self):
        return self.log.read_text(errors="replace")

    def wait(self, timeout=RUN_TIMEOUT):
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{' '.join(map(str, self.cmd[:6]))} ... still running after "
                        f"{timeout} s; its log ends:\n{self.text()[-4000:]}")
        self._out.close()
        assert rc == 0, f"exit status {rc}; log ends:\n{self.text()[-6000:]}"
        return self.text()

    def kill(self):
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._out.close()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.kill()


def _wait_for(condition, what, timeout, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    tails = "\n".join(f"--- {p}:\n{Path(p).read_text(errors='replace')[-3000:]}" for p in logs
                      if Path(p).exists())
    pytest.fail(f"waited {timeout} s for {what}\n{tails}")


def _joined(text):
    """{rank: (pid, launcher, world, local rank, local size, backend, url)} from the ranks'
    one-line reports (the first report of each rank)."""
    seen = {}
    for m in _JOINED.finditer(text):
        rank, world, backend, url, launcher, lrank, lsize, pid = m.groups()
        seen.setdefault(int(rank), (int(pid), launcher, int(world), int(lrank), int(lsize),
                                    backend, url))
    return seen


def _rank_checksums(out: Path):
    checksums = json.loads((out / "rank_weight_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums
    return checksums[0]


def _train_argv(world, out, *extra):
    return [str(REPO / "train_net.py"), "--config-file", QUICKSTART, *extra,
            *tiny_opts(world, out, **RUN)]


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _assert_trained_and_evaluated(out: Path):
    for name in ("model_0000002.pth", "model_0000005.pth", "model_0000008.pth",
                 "model_final.pth"):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    summary = json.loads((out / "eval_summary.json").read_text())
    assert "synth_sem_val" in summary["results"], summary


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny synthetic world and text cache, generated once for every run here."""
    from dataseg.data.synthetic import ensure_generated, register_synthetic_world

    tmp = tmp_path_factory.mktemp("dist")
    cfg = build_cfg(QUICKSTART, tiny_opts(tmp, tmp / "unused", **RUN))
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    return tmp


@pytest.fixture(scope="module")
def reference(world):
    """Two "machines" of one process each with Detectron2-style options: ``--num-machines 2
    --machine-rank r --dist-url tcp://127.0.0.1:PORT``. Returns (output dir, both logs)."""
    out = world / "machines_launch"
    url = f"tcp://127.0.0.1:{find_free_port()}"
    machines = [_Proc([sys.executable] + _train_argv(
        world, out, "--num-machines", "2", "--machine-rank", str(r), "--dist-url", url),
        world / f"launch_machine{r}.log") for r in (0, 1)]
    try:
        logs = [m.wait() for m in machines]
    finally:
        for m in machines:
            m.kill()
    return out, logs


# ------------------------------------------------------------------ torchrun's environment
def test_rendezvous_from_env_reads_torchruns_variables():
    assert rendezvous_from_env({"PATH": "/bin"}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}
    r = rendezvous_from_env(env)
    assert (r.launcher, r.rank, r.world_size, r.local_rank, r.local_world_size, r.url) == (
        "torchrun", 3, 4, 1, 2, "env://node0:29500")
    del env["TORCHELASTIC_RUN_ID"]
    assert rendezvous_from_env(dict(env, DATASEG_LAUNCHER="submitit")).launcher == "submitit"
    assert rendezvous_from_env(env).launcher == "env"


@pytest.mark.parametrize("change, message", [
    ({"MASTER_PORT": None}, r"but not MASTER_PORT: run under torchrun"),
    ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' is not an integer"),
    ({"RANK": "4"}, r"inconsistent ranks in the environment: RANK=4 WORLD_SIZE=4"),
    ({"LOCAL_WORLD_SIZE": "3"}, r"every machine must run the same number of processes"),
    ({"RANK": "2"}, r"every machine must run the same number of processes"),
])
def test_rendezvous_from_env_refuses_what_cannot_work(change, message):
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    for k, v in change.items():
        if v is None:
            del env[k]
        else:
            env[k] = v
    with pytest.raises(LaunchError, match=message):
        rendezvous_from_env(env)


def test_launch_under_torchrun_refuses_its_own_process_options(monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
                 "TORCHELASTIC_RUN_ID": "t"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(LaunchError, match=r"started by torchrun as rank 0 of 2, but also asked "
                                          r"for --num-gpus 2 .*leave those out"):
        launch(print, 2)


def test_process_group_timeout_from_the_environment():
    assert default_timeout({}) == timedelta(minutes=30)
    assert default_timeout({"DATASEG_DIST_TIMEOUT_MIN": "90"}) == timedelta(minutes=90)
    for bad in ("0", "soon"):
        with pytest.raises(LaunchError, match="DATASEG_DIST_TIMEOUT_MIN=.*positive number"):
            default_timeout({"DATASEG_DIST_TIMEOUT_MIN": bad})


def test_train_net_reports_a_broken_environment_in_one_line():
    proc = subprocess.run([sys.executable, str(REPO / "train_net.py"), "--config-file",
                           QUICKSTART], cwd=REPO, env=_env(RANK="0", WORLD_SIZE="2"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: started with RANK, WORLD_SIZE set but not "
                           "LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT"), proc.stderr
    assert "Traceback" not in proc.stderr


# -------------------------------------------------------------- a resumed run's config
def test_resumed_run_warns_naming_the_keys_that_differ(tmp_path, caplog):
    saved = build_cfg(QUICKSTART, ["SOLVER.MAX_ITER", "100", "OUTPUT_DIR", str(tmp_path)])
    (tmp_path / "config.yaml").write_text(saved.dump())
    now = build_cfg(QUICKSTART, ["SOLVER.MAX_ITER", "200", "SOLVER.BASE_LR", "0.001",
                                 "OUTPUT_DIR", str(tmp_path)])
    assert config_differences(saved.dump(), saved) == []
    assert config_differences(saved.dump(), now) == [("SOLVER.BASE_LR", 0.0003, 0.001),
                                                     ("SOLVER.MAX_ITER", 100, 200)]
    # nothing to resume from yet: nothing compared
    assert warn_if_config_changed(now, str(tmp_path)) == []
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with caplog.at_level(logging.WARNING, logger="dataseg"):
        keys = warn_if_config_changed(now, str(tmp_path))
    assert keys == ["SOLVER.BASE_LR", "SOLVER.MAX_ITER"]
    assert re.search(r"resuming with a config that differs from .*config.yaml.* in 2 keys: "
                     r"SOLVER.BASE_LR \(0.0003 -> 0.001\); SOLVER.MAX_ITER \(100 -> 200\)",
                     caplog.text), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dataseg"):
        assert warn_if_config_changed(saved, str(tmp_path)) == []
    assert "differs" not in caplog.text


# ------------------------------------------------------------------------ submitit, SLURM
def _submit_slurm():
    import importlib.util

    path = REPO / "tools" / "submit_slurm.py"
    spec = importlib.util.spec_from_file_location("submit_slurm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_submit_slurm_dry_run_prints_the_job(capsys, tmp_path):
    tool = _submit_slurm()
    assert tool.main(["--config-file", QUICKSTART, "--nodes", "2", "--gpus-per-node", "8",
                      "--partition", "learn", "--time", "1-12:30", "--job-dir", str(tmp_path),
                      "--dry-run", "--skip-preflight", "SOLVER.MAX_ITER", "100"]) is None
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=learn", "#SBATCH --time=2190", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@120", f"#SBATCH --output={tmp_path}/%j/%j_0_log.out"):
        assert line in out.splitlines(), out
    assert f"-m submitit.core._submit {tmp_path}/%j" in out
    assert f"train_net.py --resume --config-file {QUICKSTART} --skip-preflight SOLVER.MAX_ITER " \
           "100" in out
    assert [tool.parse_time(t) for t in ("90", "5:30", "2:00:00", "1-0", "1-2:03", "0-0:0:1")] \
        == [90, 6, 120, 1440, 1563, 1]


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "local", "--nodes", "2"], "--cluster local runs on this machine only"),
    (["--num-gpus", "2"], "--num-gpus, --num-machines, --machine-rank and --dist-url are not "
                          "used in a SLURM job"),
    (["SOLVER.NO_SUCH_KEY", "1"], "config error: .*Non-existent key: SOLVER.NO_SUCH_KEY"),
])
def test_submit_slurm_refuses_bad_requests_in_one_line(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=f"^submit_slurm.py: error: {message}"):
        _submit_slurm().main(["--config-file", QUICKSTART, "--job-dir", str(tmp_path),
                              "--gpus-per-node", "0", *argv])


def test_slurm_task_gets_torchruns_variables(monkeypatch):
    import submitit

    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242",
                 "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
                 "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": "1",
                 "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        monkeypatch.setenv(k, v)
    env = rank_environment(submitit.JobEnvironment())
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(default_master_port("4242")),
                   "DATASEG_LAUNCHER": "submitit"}
    assert rendezvous_from_env(env).launcher == "submitit"
    assert default_master_port("4242", 1) != default_master_port("4242")  # requeued: new port
    job = TrainNetJob(["--config-file", "c.yaml", "SEED", "3"])
    requeued = job.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function.argv == ["--resume", "--config-file", "c.yaml", "SEED", "3"]


# ------------------------------------------------------- two machines simulated on this one
@pytest.mark.slow
def test_two_machines_with_num_machines_train_checkpoint_and_evaluate(reference):
    out, logs = reference
    _assert_trained_and_evaluated(out)
    _rank_checksums(out)
    for r, log in enumerate(logs):
        joined = _joined(log)
        assert list(joined) == [r], log[-3000:]
        _, launcher, world_size, local_rank, local_size, backend, url = joined[r]
        assert (launcher, world_size, local_rank, local_size, backend) == (
            "launch", 2, 0, 1, "gloo")
        assert url.startswith("tcp://127.0.0.1:")


@pytest.mark.slow
def test_two_machines_with_torchrun_end_with_the_same_weights(world, reference, procs):
    """``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` on each "machine": the
    same weights as the ``--num-machines`` run, on both ranks."""
    out = world / "machines_torchrun"
    endpoint = f"127.0.0.1:{find_free_port()}"
    for node in (0, 1):
        procs.append(_Proc(_torchrun(
            "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "dist24",
            *_train_argv(world, out, "--resume")), world / f"torchrun_node{node}.log"))
    logs = [p.wait() for p in procs]
    _assert_trained_and_evaluated(out)
    assert _rank_checksums(out) == _rank_checksums(reference[0])
    joined = {}
    for log in logs:
        joined.update(_joined(log))
    assert sorted(joined) == [0, 1], logs
    for r, (_, launcher, world_size, local_rank, local_size, backend, _) in joined.items():
        assert (launcher, world_size, local_rank, local_size, backend) == (
            "torchrun", 2, 0, 1, "gloo"), r
    # --resume into an empty OUTPUT_DIR: a fresh start, said so
    assert "--resume, but no last_checkpoint in" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_machines_that_do_not_share_output_dir_refuse_to_resume(world, reference, procs):
    """Machine 0 sees the finished run's checkpoints, machine 1 (another OUTPUT_DIR, as without
    a shared filesystem) none: one line says so instead of training from two places."""
    url = f"tcp://127.0.0.1:{find_free_port()}"
    for r, out in enumerate((reference[0], world / "not_shared")):
        procs.append(_Proc([sys.executable] + _train_argv(
            world, out, "--resume", "--num-machines", "2", "--machine-rank", str(r),
            "--dist-url", url), world / f"not_shared{r}.log"))
    for p in procs:
        with pytest.raises(AssertionError, match="exit status 1"):
            p.wait()
    last = procs[0].text().strip().splitlines()[-1]
    assert re.fullmatch(r"train_net.py: error: the ranks do not resume from the same place: "
                        r"rank 0 at iteration 10 \(\S+model_final.pth\), rank 1 at iteration 0 "
                        r"\(no checkpoint\)\. Is OUTPUT_DIR \(\S+\) on a filesystem that every "
                        r"machine shares\?", last), procs[0].text()[-3000:]


# --------------------------------------------------------------- restarts that lose nothing
def _resumed_from(out: Path, rank: int):
    log = (out / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")).read_text()
    found = re.findall(rf"Rank {rank} resumed from checkpoint (\S+) \(iteration (\d+) done\): "
                       rf"continuing at iteration (\d+) of 10", log)
    assert len(found) == 1, log[-4000:]
    path, done, start = found[0]
    return Path(path).name, int(done), int(start)


def _assert_resumed(out: Path):
    """Both ranks resumed once, from the same periodic checkpoint, not from the final one."""
    resumed = [_resumed_from(out, r) for r in (0, 1)]
    assert resumed[0] == resumed[1], resumed
    name, done, start = resumed[0]
    assert name == f"model_{done:07d}.pth" and done in (2, 5, 8) and start == done + 1, resumed
    assert "differs from" not in (out / "log.txt").read_text()
    return name


@pytest.mark.slow
def test_killed_torchrun_rank_restarts_and_ends_with_the_same_weights(world, reference, procs):
    """One of two torchrun ranks is killed (SIGKILL, by its pid) after the first checkpoint;
    ``--max-restarts 1`` restarts both with ``--resume``: the run finishes with the weights of
    the uninterrupted run, byte for byte."""
    out = world / "killed"
    log = world / "killed.log"
    run = _Proc(_torchrun("--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "1",
                          "--master-addr", "127.0.0.1", "--master-port", str(find_free_port()),
                          *_train_argv(world, out, "--resume")), log)
    procs.append(run)
    joined = _wait_for(lambda: (lambda j: j if len(j) == 2 else None)(_joined(run.text())),
                       "both ranks to join", RUN_TIMEOUT, [log])
    _wait_for(lambda: (out / "last_checkpoint").exists() or run.popen.poll() is not None,
              "the first checkpoint", RUN_TIMEOUT, [log, out / "log.txt"])
    victim = joined[1][0]
    assert (out / "last_checkpoint").read_text() != "model_final.pth", "killed too late"
    os.kill(victim, signal.SIGKILL)
    text = run.wait()
    pids = [int(m.group(8)) for m in _JOINED.finditer(text) if m.group(1) == "1"]
    assert len(pids) == 2 and pids[0] == victim != pids[1], text[-4000:]
    _assert_resumed(out)
    _assert_trained_and_evaluated(out)
    assert _rank_checksums(out) == _rank_checksums(reference[0])
    # and that is the weights themselves, not only their checksums' agreement
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    straight = torch.load(reference[0] / "model_final.pth", map_location="cpu",
                          weights_only=True)["model"]
    assert final.keys() == straight.keys()
    assert all(torch.equal(final[k], straight[k]) for k in final)


@pytest.mark.slow
def test_preempted_submitit_job_requeues_and_ends_with_the_same_weights(
        world, reference, monkeypatch):
    """tools/submit_slurm.py with submitit's local executor (two tasks, one per rank): USR2,
    SLURM's preemption and time-out signal, reaches both tasks after the first checkpoint;
    submitit checkpoints the job and requeues it, and the requeued tasks resume and finish
    with the uninterrupted run's weights."""
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    for k in _RANK_VARS:
        monkeypatch.delenv(k, raising=False)
    out, jobs = world / "preempted", world / "jobs"
    job = _submit_slurm().main([
        "--cluster", "local", "--config-file", QUICKSTART, "--gpus-per-node", "0",
        "--tasks-per-node", "2", "--time", "30", "--job-dir", str(jobs),
        *tiny_opts(world, out, **RUN)])
    try:
        task_logs = [jobs / job.job_id / f"{job.job_id}_{t}_log.out" for t in (0, 1)]
        joined = _wait_for(
            lambda: (lambda j: j if len(j) == 2 else None)(
                _joined("".join(p.read_text() for p in task_logs if p.exists()))),
            "both tasks to join", RUN_TIMEOUT, task_logs)
        _wait_for(lambda: (out / "last_checkpoint").exists() or job.done(), "the first checkpoint",
                  RUN_TIMEOUT, task_logs + [out / "log.txt"])
        assert (out / "last_checkpoint").read_text() != "model_final.pth", "signalled too late"
        for pid, *_ in joined.values():  # as SLURM signals every task of the job
            os.kill(pid, signal.SIGUSR2)
        _wait_for(job.done, "the requeued job to finish", 2 * RUN_TIMEOUT, task_logs)
    finally:
        job.cancel()
    assert job.results() == [None, None], job.stderr()[-3000:]
    first = task_logs[0].read_text()
    errors = task_logs[0].with_suffix(".err").read_text()
    assert "Caught signal SIGUSR2" in errors and "this job is" in errors, errors[-3000:]
    assert "preempted or out of time: requeued" in first, first[-3000:]
    for log in task_logs:  # each task started twice: submitted, then requeued
        assert log.read_text().count(f"dataseg.slurm: job {job.job_id} task") == 2
    _assert_resumed(out)
    _assert_trained_and_evaluated(out)
    assert _rank_checksums(out) == _rank_checksums(reference[0])
