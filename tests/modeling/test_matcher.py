"""Hungarian matcher (eq. 5): optimal assignment and the cost terms."""
import itertools

import pytest
import torch
from naive_losses import dice as naive_dice
from naive_losses import flat, mean_focal, projection, sigmoid, softmax

from dataseg.modeling.matcher import HungarianMatcher


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("use_boxes", [False, True])
def test_matcher_is_optimal_against_brute_force(seed, use_boxes):
    g = torch.Generator().manual_seed(seed)
    q, t = 5, 3
    logits = torch.randn(1, q, 4, generator=g)
    masks = torch.randn(1, q, 8, 8, generator=g) * 3
    target = {"labels": torch.randint(0, 3, (t,), generator=g)}
    if use_boxes:
        xy = torch.rand(t, 2, generator=g) * 0.5
        target["boxes"] = torch.cat([xy, xy + 0.2 + torch.rand(t, 2, generator=g) * 0.3], 1)
    else:
        target["masks"] = torch.rand(t, 8, 8, generator=g) > 0.5
    matcher = HungarianMatcher(num_points=64)
    torch.manual_seed(seed)
    (rows, cols), = matcher({"pred_logits": logits, "pred_masks": masks}, [target])
    torch.manual_seed(seed)  # same sampled points for the cost matrix we check against
    cost = matcher.cost_matrix(logits[0], masks[0], target)
    got = float(cost[rows, cols].sum())
    best = min(float(sum(cost[p[j], j] for j in range(t))) for p in itertools.permutations(
        range(q), t))
    assert len(rows) == t and sorted(cols.tolist()) == list(range(t))
    assert got == pytest.approx(best, abs=1e-5)


def test_matcher_skips_invalid_predictions():
    logits = torch.randn(1, 4, 3)
    masks = torch.randn(1, 4, 6, 6)
    valid = torch.tensor([[False, True, False, True]])
    target = {"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 6, 6) > 0.5}
    (rows, _), = HungarianMatcher(num_points=16)(
        {"pred_logits": logits, "pred_masks": masks, "valid": valid}, [target])
    assert sorted(rows.tolist()) == [1, 3]


# ------------------------------------------------------- cost terms, written out by hand

# 2 predictions, 2 classes (+ background), 2x3 masks; targets with labels [1, 0]
_LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]])
_MASKS = torch.tensor([[[3.0, -2.0, 0.5], [1.0, -4.0, 2.0]],
                       [[-1.0, 2.5, -0.5], [0.0, 1.5, -3.0]]])
_TGT_MASKS = torch.tensor([[[1, 0, 1], [1, 0, 0]], [[0, 1, 0], [0, 1, 1]]], dtype=torch.bool)
_LABELS = torch.tensor([1, 0])


@pytest.mark.parametrize("wc,wf,wd", [(3.0, 0.0, 0.0), (0.0, 7.0, 0.0), (0.0, 0.0, 11.0),
                                      (3.0, 7.0, 11.0)])
def test_mask_cost_terms_with_weights_and_signs(exact_matcher_points, wc, wf, wd):
    """cost[q, t] = -wc * softmax(logits_q)[label_t] + wf * mean focal(mask_q, tgt_t)
    + wd * dice(sigmoid(mask_q), tgt_t): each term alone, then all together."""
    exact_matcher_points(2, 3)
    matcher = HungarianMatcher(cost_class=wc, cost_focal=wf, cost_dice=wd, num_points=6,
                               focal_alpha=0.25, focal_gamma=2.0)
    cost = matcher.cost_matrix(_LOGITS, _MASKS, {"labels": _LABELS, "masks": _TGT_MASKS})
    for q in range(2):
        for t in range(2):
            x, y = flat(_MASKS[q]), flat(_TGT_MASKS[t].float())
            expected = (-wc * softmax(flat(_LOGITS[q]))[int(_LABELS[t])]
                        + wf * mean_focal(x, y, 0.25, 2.0)
                        + wd * naive_dice([sigmoid(v) for v in x], y))
            assert float(cost[q, t]) == pytest.approx(expected, rel=1e-5, abs=1e-6), (q, t)


def test_focal_cost_uses_alpha_and_gamma(exact_matcher_points):
    exact_matcher_points(2, 3)
    matcher = HungarianMatcher(cost_class=0.0, cost_focal=1.0, cost_dice=0.0, num_points=6,
                               focal_alpha=0.6, focal_gamma=1.0)
    cost = matcher.cost_matrix(_LOGITS, _MASKS, {"labels": _LABELS, "masks": _TGT_MASKS})
    expected = mean_focal(flat(_MASKS[0]), flat(_TGT_MASKS[1].float()), 0.6, 1.0)
    assert float(cost[0, 1]) == pytest.approx(expected, rel=1e-5)


def test_class_term_decides_between_identical_masks():
    """Two predictions with the same mask; the one confident in class 0 must take the class-0
    target (a flipped sign of the class term would swap them)."""
    logits = torch.tensor([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]])
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, :, :2] = 5.0
    masks[0, :, 2:] = -5.0
    tgt = torch.zeros(2, 4, 4, dtype=torch.bool)
    tgt[:, :2] = True
    target = {"labels": torch.tensor([0, 1]), "masks": tgt}
    (rows, cols), = HungarianMatcher(num_points=64)(
        {"pred_logits": logits, "pred_masks": masks}, [target])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}


def test_projection_cost_with_weight(exact_matcher_points):
    """Box targets: cost = -wc * p(class) + wp * (dice(max over rows, tx) + dice(max over
    columns, ty)), tx / ty the cells whose centres lie in the box, written out by hand."""
    masks = torch.tensor([[[2.0, -1.0, 0.0, -3.0], [1.0, 3.0, -2.0, 0.5], [-1.0, -1.0, 4.0, 0.0]],
                          [[-3.0, 1.0, 2.0, -2.0], [0.0, 0.5, 1.0, -1.0], [2.0, -4.0, -1.0, 1.0]]])
    # box 0: x in [0.25, 0.75], y in [0, 0.5] on a 3x4 grid -> columns 1, 2; rows 0, 1
    # box 1: x in [0.3, 0.32] (thinner than a cell: the cell of its centre), y in [0, 1]
    boxes = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.3, 0.0, 0.32, 1.0]])
    hand_tx = [[0, 1, 1, 0], [0, 1, 0, 0]]
    hand_ty = [[1, 1, 0], [1, 1, 1]]
    matcher = HungarianMatcher(cost_class=3.0, cost_proj=7.0)
    cost = matcher.cost_matrix(_LOGITS, masks, {"labels": _LABELS, "boxes": boxes})
    for q in range(2):
        for t in range(2):
            expected = (-3.0 * softmax(flat(_LOGITS[q]))[int(_LABELS[t])]
                        + 7.0 * projection(masks[q].tolist(), hand_tx[t], hand_ty[t]))
            assert float(cost[q, t]) == pytest.approx(expected, rel=1e-5), (q, t)
