"""One real training step (DaTaSegTrainer, synthetic world, real loader) and the parameters it
changed: shared by the ViTDet and pixel-decoder tests."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_helpers import tiny_opts  # noqa: E402

from dataseg.data.synthetic import ensure_generated, register_synthetic_world  # noqa: E402
from dataseg.engine import DaTaSegTrainer, build_cfg  # noqa: E402


def unchanged_after_one_step(config_file: str, tmp: Path, **overrides):
    """Trains one iteration on the synthetic panoptic set with weight decay 0 (so a parameter
    moves only through its gradient) and returns (names of trainable parameters that did not
    change, number of trainable parameters, the trainer)."""
    opts = tiny_opts(tmp, tmp / "out", max_iter=1, train=("synth_pan_train",), test=(),
                     **{"SOLVER.WEIGHT_DECAY": 0.0, **overrides})
    cfg = build_cfg(config_file, opts)
    register_synthetic_world(cfg)
    ensure_generated(cfg)
    torch.manual_seed(0)
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    same = [n for n, v in before.items() if torch.equal(v, after[n].detach())]
    return same, len(before), trainer
