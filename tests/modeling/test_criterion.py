"""SetCriterion (eq. 4): loss values on matched targets written out by hand, deep
supervision, empty merged entries in matching (``MATCH_EMPTY_MERGED``)."""
import math

import pytest
import torch
from detectron2.config import get_cfg

from dataseg.config import add_dataseg_config
from dataseg.modeling.criterion import SetCriterion
from dataseg.modeling.matcher import HungarianMatcher
from dataseg.modeling.merge import merge_predictions


def test_criterion_no_targets_only_no_object_term():
    crit = SetCriterion(matcher=HungarianMatcher(num_points=16), num_points=16)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8)}] * 2
    losses = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    assert float(losses["loss_focal"]) == 0 and float(losses["loss_dice"]) == 0
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 3),
                                                 torch.full((8,), 2)) * 2.0
    torch.testing.assert_close(losses["loss_ce"], expected)
    sum(losses.values()).backward()
    assert torch.isfinite(masks.grad).all()


# ------------------------------------------------------------ empty merged entries
def _semantic_with_empty_entry():
    """Semantic batch, K = 2 (background index 2), 8x8 masks, MERGE over both classes.

    Proposal 0 predicts class 0 (logits [4, 0, 0]) with a mask on the left half; proposal 1
    predicts background (logits [0, 0, 3]) with an all -100 mask. After MERGE:
    entry 0 = merged class 0 (proposal 0), entry 1 = merged class 1, EMPTY (logits 0, mask
    -100), entry 2 = proposal 0 (absorbed, invalid), entry 3 = proposal 1 (valid).
    Targets: class 0 on the left half, class 1 on the right half.
    """
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    masks = torch.full((1, 2, 8, 8), -10.0)
    masks[0, 0, :, :4] = 10.0
    masks[0, 1] = -100.0
    out = merge_predictions(logits, masks, torch.tensor([0, 1]))
    assert out["counts"][0].tolist() == [1.0, 0.0]
    assert out["valid"][0].tolist() == [True, True, False, True]
    tgt = torch.zeros(2, 8, 8, dtype=torch.bool)
    tgt[0, :, :4] = True
    tgt[1, :, 4:] = True
    return out, [{"labels": torch.tensor([0, 1]), "masks": tgt}]


def _ce(logits, cls):
    return -torch.log_softmax(torch.tensor(logits, dtype=torch.float64), 0)[cls].item()


@pytest.mark.parametrize("match_empty", [True, False])
def test_match_empty_merged(match_empty):
    """True (eq. 2 literally): the class-1 target is matched to the empty entry 1 (its mask
    costs equal proposal 1's, both -100 everywhere; its class cost -2 * 1/3 beats proposal 1's
    -2 / (2 + e^3)), so the class loss asks the constant entry for class 1. False: entry 1 is
    left out of matching and the target goes to proposal 1. Class loss by hand: weight 1 for
    matched entries, 0.1 for no-object ones, 0 for invalid ones; normalised by the sum of the
    weights; times CLASS_WEIGHT 2."""
    out, targets = _semantic_with_empty_entry()
    crit = SetCriterion(matcher=HungarianMatcher(num_points=256), num_points=256,
                        match_empty_merged=match_empty)
    torch.manual_seed(0)
    losses = crit(out, targets)
    ce_m0 = _ce([4 / (1 + 1e-6), 0, 0], 0)
    if match_empty:
        # entry 0 -> class 0, entry 1 (logits 0) -> class 1, proposal 1 -> no object
        expected = (ce_m0 + math.log(3) + 0.1 * _ce([0, 0, 3], 2)) / 2.1
    else:
        # entry 0 -> class 0, entry 1 -> no object (weight 0.1), proposal 1 -> class 1
        expected = (ce_m0 + 0.1 * math.log(3) + _ce([0, 0, 3], 1)) / 2.1
    assert float(losses["loss_ce"]) == pytest.approx(2 * expected, rel=1e-5)


def test_match_empty_merged_from_config():
    cfg = get_cfg()
    add_dataseg_config(cfg)
    assert cfg.MODEL.DATASEG.MATCH_EMPTY_MERGED is True
    assert SetCriterion(cfg).match_empty_merged is True
    cfg.MODEL.DATASEG.MATCH_EMPTY_MERGED = False
    assert SetCriterion(cfg).match_empty_merged is False
