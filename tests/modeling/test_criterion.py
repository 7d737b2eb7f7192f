"""SetCriterion (eq. 4): loss values on matched targets written out by hand, deep
supervision, empty merged entries in matching (``MATCH_EMPTY_MERGED``)."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from naive_losses import cross_entropy, dice, flat, mean_focal, projection, sigmoid

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


# ------------------------------------------------------ loss values, written out by hand
H, W = 2, 3
WEIGHTS = {"class_weight": 3.0, "focal_weight": 7.0, "dice_weight": 11.0, "proj_weight": 13.0,
           "no_object_weight": 0.2, "focal_alpha": 0.3, "focal_gamma": 1.5}


def _criterion(**kw):
    args = dict(WEIGHTS, num_points=H * W)
    args.update(kw)
    matcher = HungarianMatcher(cost_class=args["class_weight"], cost_focal=args["focal_weight"],
                               cost_dice=args["dice_weight"], cost_proj=args["proj_weight"],
                               num_points=H * W, focal_alpha=args["focal_alpha"],
                               focal_gamma=args["focal_gamma"])
    return SetCriterion(matcher=matcher, **args)


def _prediction_set(seed, b=2, q=4, k=2):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, q, dtype=torch.bool)
    valid[1, 2] = False  # an absorbed proposal: no loss at all
    return {"pred_logits": torch.randn(b, q, k + 1, generator=g) * 2,
            "pred_masks": torch.randn(b, q, H, W, generator=g) * 3, "valid": valid}


def _mask_targets():
    m0 = torch.tensor([[[1, 1, 0], [0, 1, 0]], [[0, 0, 1], [1, 0, 1]]], dtype=torch.bool)
    m1 = torch.tensor([[[1, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    return [{"labels": torch.tensor([1, 0]), "masks": m0},
            {"labels": torch.tensor([1]), "masks": m1}]


def _naive_class_loss(out, targets, indices, no_object_weight):
    """Sum over valid predictions of w * CE / sum of w: w = 1 for a matched prediction (its
    target's class), no_object_weight for an unmatched one (the background class K)."""
    logits = out["pred_logits"]
    k = logits.shape[-1] - 1
    num = den = 0.0
    for b in range(logits.shape[0]):
        matched = {int(s): int(targets[b]["labels"][int(t)]) for s, t in zip(*indices[b])}
        for q in range(logits.shape[1]):
            if not bool(out["valid"][b, q]):
                continue
            cls = matched.get(q, k)
            w = 1.0 if cls < k else no_object_weight
            num += w * cross_entropy(flat(logits[b, q]), cls)
            den += w
    return num / den


def _naive_losses(crit, out, targets):
    """Every loss of one prediction set from the matcher's assignment, by hand."""
    indices = crit.matcher(out, targets)
    n = max(sum(len(t["labels"]) for t in targets), 1)
    w = WEIGHTS
    losses = {"loss_ce": w["class_weight"] * _naive_class_loss(out, targets, indices,
                                                                w["no_object_weight"])}
    pairs = [(b, int(s), int(t)) for b, (src, tgt) in enumerate(indices)
             for s, t in zip(src, tgt)]
    if "masks" in targets[0]:
        focal = dice_sum = 0.0
        for b, s, t in pairs:
            x = flat(out["pred_masks"][b, s])
            y = flat(targets[b]["masks"][t].float())
            focal += mean_focal(x, y, w["focal_alpha"], w["focal_gamma"])
            dice_sum += dice([sigmoid(v) for v in x], y)
        losses["loss_focal"] = w["focal_weight"] * focal / n
        losses["loss_dice"] = w["dice_weight"] * dice_sum / n
    else:
        proj = 0.0
        for b, s, t in pairs:
            tx, ty = targets[b]["hand_tx"][t], targets[b]["hand_ty"][t]
            proj += projection(out["pred_masks"][b, s].tolist(), tx, ty)
        losses["loss_proj"] = w["proj_weight"] * proj / n
    return losses, pairs


def test_mask_losses_on_matched_targets_by_hand(exact_matcher_points, exact_loss_points):
    """CE with the no-object weight on unmatched valid predictions, focal (alpha, gamma) and
    dice on the matched pairs, each divided by the number of targets in the batch (3) and
    multiplied by its weight; an absorbed (invalid) prediction adds nothing."""
    exact_matcher_points(H, W)
    exact_loss_points(H, W)
    crit = _criterion()
    out, targets = _prediction_set(0), _mask_targets()
    losses = crit(out, targets)
    expected, pairs = _naive_losses(crit, out, targets)
    assert len(pairs) == 3
    assert set(losses) == {"loss_ce", "loss_focal", "loss_dice"}
    for key, value in expected.items():
        assert float(losses[key]) == pytest.approx(value, rel=1e-5), key


def test_no_object_weight_changes_the_class_loss(exact_matcher_points, exact_loss_points):
    """The same predictions with no-object weight 1.0 give the plain mean CE over the valid
    predictions (7 of 8), matched ones with their class, the rest with background."""
    exact_matcher_points(H, W)
    exact_loss_points(H, W)
    out, targets = _prediction_set(1), _mask_targets()
    crit = _criterion(no_object_weight=1.0)
    indices = crit.matcher(out, targets)
    plain = _naive_class_loss(out, targets, indices, 1.0)
    weighted = _naive_class_loss(out, targets, indices, 0.2)
    assert abs(plain - weighted) > 1e-3  # the case tells the two apart
    assert float(crit.loss_labels(out, targets, indices)) == pytest.approx(plain, rel=1e-5)
    crit02 = _criterion()
    assert float(crit02.loss_labels(out, targets, indices)) == pytest.approx(weighted, rel=1e-5)


def test_box_losses_on_matched_targets_by_hand(exact_matcher_points):
    exact_matcher_points(H, W)
    crit = _criterion()
    out = _prediction_set(2)
    # 2x3 grid: cell centres x = 1/6, 1/2, 5/6; y = 1/4, 3/4
    targets = [{"labels": torch.tensor([0, 1]),
                "boxes": torch.tensor([[0.0, 0.0, 0.6, 0.5], [0.4, 0.0, 1.0, 1.0]]),
                "hand_tx": [[1, 1, 0], [0, 1, 1]], "hand_ty": [[1, 0], [1, 1]]},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.6, 0.9, 0.9]]),
                "hand_tx": [[0, 0, 1]], "hand_ty": [[0, 1]]}]
    losses = crit(out, targets)
    expected, pairs = _naive_losses(crit, out, targets)
    assert len(pairs) == 3 and set(losses) == {"loss_ce", "loss_proj"}
    for key, value in expected.items():
        assert float(losses[key]) == pytest.approx(value, rel=1e-5), key


def test_deep_supervision_every_aux_set_and_dataset_multiplier(exact_matcher_points,
                                                                exact_loss_points):
    """Each auxiliary set gets its own matching and the same losses, suffixed _0, _1, ...; the
    per-dataset multiplier (loss_scale) multiplies every term of every set."""
    exact_matcher_points(H, W)
    exact_loss_points(H, W)
    crit = _criterion()
    targets = _mask_targets()
    out = _prediction_set(3)
    aux = [_prediction_set(4), _prediction_set(5)]
    losses = crit(dict(out, aux_outputs=aux), targets, loss_scale=0.5)
    assert len(losses) == 3 * 3
    sets = [("", out), ("_0", aux[0]), ("_1", aux[1])]
    total = 0.0
    for suffix, pred in sets:
        expected, _ = _naive_losses(crit, pred, targets)
        for key, value in expected.items():
            assert float(losses[key + suffix]) == pytest.approx(0.5 * value, rel=1e-5), \
                key + suffix
            total += 0.5 * value
    assert float(sum(losses.values())) == pytest.approx(total, rel=1e-5)
