"""build_optimizer's fused AdamW update matches the per-tensor loop (torch's CPU default)."""
import copy

import torch
from detectron2.config import get_cfg
from torch import nn

from dataseg.config import add_dataseg_config
from dataseg.engine.optimizer import build_optimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.LazyLinear(4))


def test_fused_adamw_update_equals_per_tensor_update():
    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    x = torch.randn(4, 3, 6, 6)
    a = _model()
    a(x)  # materialise the lazy layer
    b = copy.deepcopy(a)
    start = copy.deepcopy(a)
    opt_a = build_optimizer(cfg, a)
    assert all(g["fused"] for g in opt_a.param_groups)
    opt_b = build_optimizer(cfg, b)
    for g in opt_b.param_groups:
        g["fused"], g["foreach"] = False, False  # the per-tensor loop, torch's CPU default
    for step in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (model(x + step) ** 2).mean().backward()
            opt.step()
    for (n, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), start.parameters()):
        assert not torch.equal(pa, p0), n  # the steps did move every parameter
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=n)
