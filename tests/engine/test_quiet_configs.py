"""Issue 25: no noise on every command: each config in configs/ carries VERSION: 2 (no
Detectron2 "has no VERSION" warning), and the CUDA fallback line appears only when a config or
an override asked for CUDA."""
import logging

import pytest
import torch
from engine_helpers import REPO, collect_logs

from dataseg.engine import build_cfg

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) > 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_loads_without_version_or_device_warnings(path):
    assert "\nVERSION: 2" in path.read_text()
    with collect_logs("detectron2", "dataseg", level=logging.WARNING) as said:
        cfg = build_cfg(str(path))
    assert not [m for m in said if "has no VERSION" in m or "CUDA is not available" in m], said
    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback needs a machine without CUDA")
def test_cuda_fallback_is_said_when_cuda_was_asked():
    with collect_logs("dataseg.engine.defaults", level=logging.WARNING) as said:
        cfg = build_cfg(str(REPO / "configs" / "quickstart.yaml"), ["MODEL.DEVICE", "cuda"])
    assert cfg.MODEL.DEVICE == "cpu"
    assert said == [
        "MODEL.DEVICE=cuda but CUDA is not available: using the CPU"]
