"""Optimizer and learning-rate schedule of DaTaSeg training.

AdamW (paper) with per-parameter groups: the backbone's learning rate is scaled by
SOLVER.BACKBONE_MULTIPLIER (paper: 0.1); normalisation layers get SOLVER.WEIGHT_DECAY_NORM and
embeddings (query features/positions, level embeddings, the background class embedding)
SOLVER.WEIGHT_DECAY_EMBED (both 0 by default). SOLVER.CLIP_GRADIENTS with CLIP_TYPE
"full_model" clips the norm of all gradients together (Mask2Former's choice); "value" and
"norm" keep Detectron2's per-parameter behaviour.
"""
import itertools
from typing import Any, Dict, List

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

__all__ = ["build_optimizer", "build_lr_scheduler", "param_groups"]

NORM_TYPES = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm, torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


def _is_norm(module):
    # FrozenBatchNorm2d has no trainable params; detectron2's BatchNorm2d subclasses torch's.
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm2d")


def _is_embedding(param_name, module):
    """nn.Embedding tables and raw parameters (level embeddings, the background embedding)."""
    return isinstance(module, torch.nn.Embedding) or param_name not in ("weight", "bias")


def param_groups(model, *, base_lr, weight_decay, weight_decay_norm, weight_decay_embed,
                 backbone_multiplier) -> List[Dict[str, Any]]:
    """One group per trainable parameter with its learning rate and weight decay."""
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, wd = base_lr, weight_decay
            if "backbone" in module_name.split("."):
                lr = lr * backbone_multiplier
            if _is_norm(module):
                wd = weight_decay_norm
            elif _is_embedding(param_name, module):
                wd = weight_decay_embed
            groups.append({"params": [param], "lr": lr, "weight_decay": wd,
                           "name": f"{module_name}.{param_name}".lstrip(".")})
    return groups


def _full_model_clipping(optimizer_cls, max_norm):
    class FullModelClipping(optimizer_cls):
        """Clips the global gradient norm over all parameter groups before each step."""

        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClipping.__name__ = f"FullModelClipping{optimizer_cls.__name__}"
    return FullModelClipping


def build_optimizer(cfg, model):
    groups = param_groups(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_embed=cfg.SOLVER.WEIGHT_DECAY_EMBED,
        backbone_multiplier=cfg.SOLVER.BACKBONE_MULTIPLIER)
    name = cfg.SOLVER.OPTIMIZER.upper()
    # AdamW fused: one kernel per parameter tensor instead of ~10 elementwise ops (torch's CPU
    # default); same update up to rounding (tests/engine/test_optimizer.py). The groups hold
    # one parameter each, so foreach (multi-tensor) would batch nothing.
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"betas": (0.9, 0.999), "fused": True}
    elif name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM,
                                                  "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer {cfg.SOLVER.OPTIMIZER!r} "
                         "(ADAMW or SGD)")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE)
        return optimizer_cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
    optimizer = optimizer_cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
    return maybe_add_gradient_clipping(cfg, optimizer)


def build_lr_scheduler(cfg, optimizer):
    """Detectron2's schedules plus "WarmupPolyLR" (lr * (1 - t)^power, Mask2Former's ADE recipe)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = PolynomialDecayParamScheduler(1.0, cfg.SOLVER.POLY_LR_POWER)
    sched = WarmupParamScheduler(sched, cfg.SOLVER.WARMUP_FACTOR,
                                 min(cfg.SOLVER.WARMUP_ITERS / max(cfg.SOLVER.MAX_ITER, 1), 1.0),
                                 cfg.SOLVER.WARMUP_METHOD)
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
