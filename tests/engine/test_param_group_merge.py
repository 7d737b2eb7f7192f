"""Issue 22: the optimizer holds one group per (lr, weight decay) instead of one per parameter.

Pinned here: the real R50 config's group count, every parameter's lr and weight decay equal to
the per-parameter rule of before (written out by hand below, not taken from the package), one
fused AdamW call per group, and that a checkpoint written with one group per parameter resumes
into the merged layout and ends bit-identical to an uninterrupted run (old layout or new)."""
import torch
from detectron2.modeling import build_model
from engine_helpers import QUICKSTART, REPO, tiny_opts, train_until
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import dataseg.modeling  # noqa: F401  (registers DaTaSeg)
from dataseg.data.synthetic import ensure_generated, register_synthetic_world
from dataseg.engine import DaTaSegTrainer, build_cfg
from dataseg.engine.optimizer import build_optimizer

R50 = str(REPO / "configs" / "dataseg_r50.yaml")
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def per_parameter_rule(model, base_lr, wd, wd_norm, wd_embed, backbone_mult):
    """The layout before issue 22, by hand: one group per trainable parameter (shared ones
    once), in named_modules order; lr x backbone multiplier inside the backbone; norms take
    wd_norm, nn.Embedding tables and raw parameters (not "weight"/"bias") wd_embed."""
    groups, seen = [], set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in seen:
                continue
            seen.add(p)
            lr = base_lr * (backbone_mult if "backbone" in mname.split(".") else 1.0)
            if isinstance(module, _NORMS) or type(module).__name__.endswith("Norm2d"):
                decay = wd_norm
            elif isinstance(module, nn.Embedding) or pname not in ("weight", "bias"):
                decay = wd_embed
            else:
                decay = wd
            groups.append({"params": [p], "lr": lr, "weight_decay": decay,
                           "name": f"{mname}.{pname}".lstrip(".")})
    return groups


def _rule_for(cfg, model):
    s = cfg.SOLVER
    return per_parameter_rule(model, s.BASE_LR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_NORM,
                              s.WEIGHT_DECAY_EMBED, s.BACKBONE_MULTIPLIER)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_r50_groups_are_few_and_keep_every_parameters_lr_and_weight_decay():
    cfg = build_cfg(R50, ["MODEL.DATASEG.CLASSIFIER.TEXT_DIM", 16, "MODEL.WEIGHTS", "",
                          "MODEL.TEXT_ENCODER.NAME", "minilm"])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    old = _rule_for(cfg, model)
    assert len(old) == 348  # the layout of before: one group per parameter
    # backbone lr 1e-5 (wd 0.05; its FrozenBN has no parameters), head lr 1e-4 with wd 0.05,
    # and wd 0 for GroupNorm/LayerNorm and for embeddings
    assert len(opt.param_groups) == 3
    want = {g["name"]: (g["lr"], g["weight_decay"], g["params"][0]) for g in old}
    got = {}
    for g in opt.param_groups:
        assert len(g["param_names"]) == len(g["params"])
        for name, p in zip(g["param_names"], g["params"]):
            got[name] = (g["lr"], g["weight_decay"], p)
    assert got.keys() == want.keys()
    for name, (lr, wd, p) in want.items():
        assert got[name][0] == lr and got[name][1] == wd and got[name][2] is p, name
    # one fused multi-tensor AdamW call per group (the full-model clipping runs first)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3) if p.requires_grad else None
    with _CountOps() as ops:
        opt.step()
    assert ops.counts.get("_fused_adamw_") == len(opt.param_groups)


class _PerParameterTrainer(DaTaSegTrainer):
    """The trainer with the optimizer of before issue 22: fused AdamW over one group per
    parameter, full-model clipping over all of them (written out here)."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        clip = cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE

        class Clipped(torch.optim.AdamW):
            def step(self, closure=None):
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.param_groups for p in g["params"]], clip)
                return super().step(closure=closure)

        return Clipped(_rule_for(cfg, model), lr=cfg.SOLVER.BASE_LR, betas=(0.9, 0.999),
                       fused=True)


def _cfg(tmp_path, out, max_iter=6):
    opts = tiny_opts(tmp_path, tmp_path / out, max_iter=max_iter, test=(), **{
        "SOLVER.CHECKPOINT_PERIOD": 3, "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
        "SOLVER.BACKBONE_MULTIPLIER": 0.1, "SOLVER.CLIP_GRADIENTS.ENABLED": True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01})
    cfg = build_cfg(QUICKSTART, opts)
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    return cfg


def _train(trainer_cls, cfg, resume=False, stop_at=None):
    return train_until(cfg, trainer_cls, resume=resume, stop_at=stop_at)


def test_per_parameter_checkpoint_resumes_into_merged_groups_bit_exactly(tmp_path):
    cfg_a = _cfg(tmp_path, "old_layout")
    old, _ = _train(_PerParameterTrainer, cfg_a, stop_at=3)  # model_0000002: old layout
    n_params = len(old.optimizer.param_groups)
    assert n_params > 100
    saved = torch.load(tmp_path / "old_layout" / "model_0000002.pth", weights_only=False)
    assert len(saved["trainer"]["_trainer"]["optimizer"]["param_groups"]) == n_params
    resumed_trainer, resumed = _train(DaTaSegTrainer, cfg_a, resume=True)
    assert resumed_trainer.start_iter == 3
    groups = resumed_trainer.optimizer.param_groups
    assert len(groups) <= 8
    # Adam's moments came from the checkpoint: every parameter has its state, stepped 6 times
    assert all(int(resumed_trainer.optimizer.state[p]["step"]) == 6
               for g in groups for p in g["params"])
    # the scheduler's base lrs follow the merged groups (0.1x in the backbone)
    assert resumed_trainer.scheduler.base_lrs == [g["initial_lr"] for g in groups]

    _, straight_new = _train(DaTaSegTrainer, _cfg(tmp_path, "straight_new"))
    _, straight_old = _train(_PerParameterTrainer, _cfg(tmp_path, "straight_old"))
    _, one_step = _train(DaTaSegTrainer, _cfg(tmp_path, "one", max_iter=1))
    assert resumed.keys() == straight_new.keys() == straight_old.keys()
    for k in straight_new:
        assert torch.equal(resumed[k], straight_new[k]), k
        assert torch.equal(straight_new[k], straight_old[k]), k
    assert any(not torch.equal(one_step[k], straight_new[k]) for k in straight_new
               if straight_new[k].is_floating_point())
