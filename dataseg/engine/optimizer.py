"""Optimizer and learning-rate schedule of DaTaSeg training.

AdamW (paper) with per-parameter learning rates and weight decays: the backbone's learning
rate is scaled by SOLVER.BACKBONE_MULTIPLIER (paper: 0.1); normalisation layers get
SOLVER.WEIGHT_DECAY_NORM and embeddings (query features/positions, level embeddings, the
background class embedding) SOLVER.WEIGHT_DECAY_EMBED (both 0 by default).
SOLVER.CLIP_GRADIENTS with CLIP_TYPE "full_model" clips the norm of all gradients together
(Mask2Former's choice); "value" and "norm" keep Detectron2's per-parameter behaviour.

The per-parameter rule (``param_groups``) gives each parameter its (lr, weight decay); the
optimizer holds one group per distinct (lr, weight decay, in the backbone or not)
(``merge_param_groups``, issue 22), so fused AdamW updates each group's tensors in one call
(one group per parameter made it launch one kernel per tensor). Each group lists its
parameters' names under ``param_names`` (PyTorch's named parameter groups);
``remap_per_parameter_state`` converts the optimizer state of a checkpoint written with one
group per parameter (before issue 22) to this layout, so such runs resume.

ViT backbones (a backbone with ``num_layers``) get ViTDet's layer-wise lr decay when
SOLVER.LAYER_DECAY < 1 (``vit_lr_decay_rate``); SOLVER.WEIGHT_DECAY_BIAS, when set, is the
weight decay of every bias (ViTDet configs: 0, with norms and position embeddings also at 0).
"""
import itertools
from typing import Any, Dict, List, Optional

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

__all__ = ["build_optimizer", "build_lr_scheduler", "merge_param_groups", "param_groups",
           "remap_per_parameter_state", "vit_lr_decay_rate"]

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


def vit_lr_decay_rate(name: str, num_layers: int, decay: float) -> float:
    """ViTDet's layer-wise lr decay multiplier of parameter ``name`` (full model name).

    Backbone patch/position embeddings are layer 0, ``...blocks.<i>.`` is layer i + 1, anything
    else (the feature pyramid, the rest of the model) layer num_layers + 1; the multiplier is
    decay ** (num_layers + 1 - layer).
    """
    layer = num_layers + 1
    if "backbone" in name.split("."):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer = 0
        elif ".blocks." in name:
            layer = int(name[name.find(".blocks."):].split(".")[2]) + 1
    return decay ** (num_layers + 1 - layer)


def param_groups(model, *, base_lr, weight_decay, weight_decay_norm, weight_decay_embed,
                 backbone_multiplier, layer_decay: float = 1.0, num_layers: int = 0,
                 weight_decay_bias: Optional[float] = None) -> List[Dict[str, Any]]:
    """One group per trainable parameter with its learning rate and weight decay.

    ``layer_decay`` < 1 scales backbone learning rates by ``vit_lr_decay_rate`` over
    ``num_layers`` transformer blocks; ``weight_decay_bias`` (None = WEIGHT_DECAY) applies to
    every bias outside norms."""
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, wd = base_lr, weight_decay
            full_name = f"{module_name}.{param_name}".lstrip(".")
            if "backbone" in module_name.split("."):
                lr = lr * backbone_multiplier
                if layer_decay != 1.0:
                    lr = lr * vit_lr_decay_rate(full_name, num_layers, layer_decay)
            if _is_norm(module):
                wd = weight_decay_norm
            elif _is_embedding(param_name, module):
                wd = weight_decay_embed
            elif param_name == "bias" and weight_decay_bias is not None:
                wd = weight_decay_bias
            groups.append({"params": [param], "lr": lr, "weight_decay": wd,
                           "name": full_name})
    return groups


def _in_backbone(param_name: str) -> bool:
    return "backbone" in param_name.split(".")


def merge_param_groups(groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per-parameter groups (``param_groups``) -> one group per distinct (lr, weight decay,
    backbone or not), in order of first appearance. Each merged group's ``params`` are
    ``(name, parameter)`` pairs (PyTorch keeps the names as ``param_names``); its ``name`` is
    "backbone" or "head" (the trainer logs the backbone's lr apart). Every parameter keeps
    exactly its lr and weight decay."""
    merged: Dict[tuple, Dict[str, Any]] = {}
    for g in groups:
        (param,) = g["params"]
        backbone = _in_backbone(g["name"])
        key = (g["lr"], g["weight_decay"], backbone)
        if key not in merged:
            merged[key] = {"params": [], "lr": g["lr"], "weight_decay": g["weight_decay"],
                           "name": "backbone" if backbone else "head"}
        merged[key]["params"].append((g["name"], param))
    return list(merged.values())


def remap_per_parameter_state(state_dict: Dict[str, Any], optimizer):
    """An optimizer state dict saved with one group per parameter (each group naming its
    parameter under ``name``: the layout before issue 22), converted to ``optimizer``'s merged
    groups (``param_names``). Returns ``(state_dict, old_group_of_each_new_group)``, the second
    None when ``state_dict`` is not in the old layout (returned unchanged). A checkpoint whose
    parameters or per-parameter hyper-parameters do not fit is a one-line ``ValueError``."""
    old_groups = state_dict.get("param_groups", [])
    if not old_groups or any("param_names" in g or len(g["params"]) != 1 or "name" not in g
                             for g in old_groups):
        return state_dict, None
    old = {g["name"]: (i, g) for i, g in enumerate(old_groups)}
    new_groups, new_state, group_map, index = [], {}, [], 0
    for cur in optimizer.param_groups:
        names = cur.get("param_names")
        if names is None:
            return state_dict, None  # an optimizer without named groups: nothing to map to
        missing = [n for n in names if n not in old]
        if missing:
            raise ValueError(f"optimizer state (one group per parameter) has no parameter "
                             f"{missing[0]!r} ({len(missing)} missing): saved by another model")
        first_i, first = old[names[0]]
        ids = []
        for n in names:
            _, g = old[n]
            if (g["lr"], g["weight_decay"]) != (first["lr"], first["weight_decay"]):
                raise ValueError(f"optimizer state (one group per parameter): {n!r} has lr/"
                                 f"weight decay {g['lr']}/{g['weight_decay']}, {names[0]!r} "
                                 f"{first['lr']}/{first['weight_decay']}: not one group now")
            if g["params"][0] in state_dict["state"]:
                new_state[index] = state_dict["state"][g["params"][0]]
            ids.append(index)
            index += 1
        hyper = {k: v for k, v in first.items() if k not in ("params", "name")}
        new_groups.append({**hyper, "params": ids, "param_names": list(names),
                           "name": cur["name"]})
        group_map.append(first_i)
    if index != len(old):
        extra = sorted(set(old) - {n for g in new_groups for n in g["param_names"]})
        raise ValueError(f"optimizer state (one group per parameter) holds {len(old)} "
                         f"parameters, the model trains {index} (e.g. {extra[:1]})")
    return {"state": new_state, "param_groups": new_groups}, group_map


def _full_model_clipping(optimizer_cls, max_norm, ordered_params=None):
    class FullModelClipping(optimizer_cls):
        """Clips the global gradient norm over all parameter groups before each step (the
        parameters in model order, so the norm sums in the same order whatever the
        grouping)."""

        def step(self, closure=None):
            params = (ordered_params if ordered_params is not None else
                      list(itertools.chain(*[g["params"] for g in self.param_groups])))
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelClipping.__name__ = f"FullModelClipping{optimizer_cls.__name__}"
    return FullModelClipping


def _layer_decay_args(cfg, model) -> Dict[str, Any]:
    """SOLVER.LAYER_DECAY and the backbone depth it needs (an error for non-ViT backbones)."""
    decay = cfg.SOLVER.get("LAYER_DECAY", 1.0)
    if decay == 1.0:
        return {}
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"SOLVER.LAYER_DECAY must be in (0, 1], got {decay}")
    backbone = getattr(getattr(model, "module", model), "backbone", None)
    num_layers = getattr(backbone, "num_layers", None)
    if num_layers is None:
        raise ValueError(f"SOLVER.LAYER_DECAY={decay} needs a ViT backbone (one with "
                         f"'num_layers'); {type(backbone).__name__} has none: set it to 1.0")
    return {"layer_decay": decay, "num_layers": int(num_layers)}


def build_optimizer(cfg, model):
    per_param = param_groups(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_embed=cfg.SOLVER.WEIGHT_DECAY_EMBED,
        backbone_multiplier=cfg.SOLVER.BACKBONE_MULTIPLIER,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS, **_layer_decay_args(cfg, model))
    groups = merge_param_groups(per_param)
    name = cfg.SOLVER.OPTIMIZER.upper()
    # AdamW fused: one multi-tensor kernel call per group instead of ~10 elementwise ops per
    # tensor (torch's CPU default); same update up to rounding (tests/engine/test_optimizer.py),
    # and bit-identical whatever the grouping (tests/engine/test_param_group_merge.py).
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
        optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE,
                                             [g["params"][0] for g in per_param])
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
