"""dataseg.engine.launch: one process runs in-process, unless DATASEG_FORCE_DISTRIBUTED=1."""
import json
import os

import torch.distributed as dist

from dataseg.engine.launch import launch


def _record(path):
    """Writes whether this process is in a process group, its backend and world size."""
    info = {"pid": os.getpid(), "initialized": dist.is_available() and dist.is_initialized()}
    if info["initialized"]:
        info.update(backend=dist.get_backend(), world_size=dist.get_world_size(),
                    rank=dist.get_rank())
    with open(path, "w") as f:
        json.dump(info, f)


def test_one_process_runs_here_without_a_process_group(tmp_path, monkeypatch):
    monkeypatch.delenv("DATASEG_FORCE_DISTRIBUTED", raising=False)
    out = tmp_path / "info.json"
    launch(_record, 1, args=(str(out),))
    info = json.loads(out.read_text())
    assert info == {"pid": os.getpid(), "initialized": False}


def test_forced_one_process_joins_a_gloo_group_in_a_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASEG_FORCE_DISTRIBUTED", "1")
    out = tmp_path / "info.json"
    launch(_record, 1, args=(str(out),), backend="gloo")
    info = json.loads(out.read_text())
    assert info["pid"] != os.getpid()
    assert (info["initialized"], info["backend"], info["world_size"], info["rank"]) == (
        True, "gloo", 1, 0)


def test_each_rank_prints_its_backend(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("DATASEG_FORCE_DISTRIBUTED", "1")
    launch(_record, 1, args=(str(tmp_path / "info.json"),), backend="gloo")
    assert "rank 0 of 1 joined the gloo process group" in capfd.readouterr().out
