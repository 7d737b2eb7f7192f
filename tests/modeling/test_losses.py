"""Losses of eq. (3)-(4) and their pairwise costs on hand-made tensors."""
import math

import pytest
import torch
from naive_losses import dice, flat, mean_focal, projection, sigmoid

from dataseg.modeling.losses import (
    box_projection_targets,
    dice_cost,
    dice_loss,
    focal_cost,
    projection_cost,
    projection_loss,
    sample_points,
    sigmoid_focal_loss,
)


def _box_mask(h, w, x0, y0, x1, y1, inside=20.0):
    m = torch.full((h, w), -inside)
    m[y0:y1, x0:x1] = inside
    return m


def test_projection_loss_zero_when_mask_fills_box():
    h, w = 12, 10
    mask = _box_mask(h, w, 2, 3, 6, 9, inside=50.0)
    box = torch.tensor([[2 / w, 3 / h, 6 / w, 9 / h]])
    assert float(projection_loss(mask[None], box)) < 1e-5


def test_projection_loss_positive_otherwise_and_has_gradients():
    h, w = 12, 10
    box = torch.tensor([[2 / w, 3 / h, 6 / w, 9 / h]])
    for mask in (_box_mask(h, w, 2, 3, 5, 9, 3.0), _box_mask(h, w, 0, 0, 10, 12, 3.0),
                 _box_mask(h, w, 2, 3, 6, 9, inside=0.5)):
        mask = mask.clone().requires_grad_()
        loss = projection_loss(mask[None], box)
        assert float(loss) > 1e-3
        loss.sum().backward()
        assert mask.grad.abs().sum() > 0
    # a diagonal line inside the box has the same projections as the box: loss 0 (eq. 3 alone
    # does not pin the shape down, which is why the paper relies on co-training)
    diag = torch.full((h, w), -50.0)
    for i in range(6):
        diag[3 + i, 2 + min(i, 3)] = 50.0
    assert float(projection_loss(diag[None], box)) < 1e-5


# ------------------------------------------------------------ values written out by hand

LN3 = math.log(3.0)


def test_focal_loss_by_hand_alpha_on_the_positive_side():
    """logits [0, ln 3, -ln 3] (p = 1/2, 3/4, 1/4), targets [1, 0, 1], alpha 0.25, gamma 2:
    0.25 * (1/2)^2 * ln 2, 0.75 * (3/4)^2 * ln 4, 0.25 * (3/4)^2 * ln 4; mean of the three."""
    logits = torch.tensor([[0.0, LN3, -LN3]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    by_hand = (0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)
               + 0.25 * 0.5625 * math.log(4)) / 3
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    assert got.shape == (1,) and float(got[0]) == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 1.0), (-1.0, 2.0), (-1.0, 0.0)])
def test_focal_loss_against_naive_loop(alpha, gamma):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, generator=g) * 3
    targets = (torch.rand(3, 7, generator=g) > 0.5).float()
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    for q in range(3):
        expected = mean_focal(flat(logits[q]), flat(targets[q]), alpha, gamma)
        assert float(got[q]) == pytest.approx(expected, rel=1e-5)
    if alpha < 0 and gamma == 0:  # no alpha, no modulation: plain BCE
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets,
                                                                   reduction="none").mean(-1)
        torch.testing.assert_close(got, bce)


def test_dice_loss_by_hand():
    """p = [0.5, 1, 0], t = [1, 1, 0]: 1 - (2 * 1.5 + 1) / (1.5 + 2 + 1) = 1/9."""
    got = dice_loss(torch.tensor([[0.5, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert float(got[0]) == pytest.approx(1 / 9, rel=1e-6)
    # empty prediction and empty target: 0 (the +1 smoothing), full miss of one pixel: 1/2
    assert float(dice_loss(torch.zeros(1, 4), torch.zeros(1, 4))[0]) == pytest.approx(0.0)
    assert float(dice_loss(torch.zeros(1, 4), torch.tensor([[0, 1.0, 0, 0]]))[0]) == \
        pytest.approx(0.5)


def test_pairwise_costs_equal_per_pair_losses():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 10, generator=g) * 2
    targets = (torch.rand(2, 10, generator=g) > 0.4).float()
    fc = focal_cost(logits, targets, 0.3, 1.5)
    dc = dice_cost(logits.sigmoid(), targets)
    assert fc.shape == dc.shape == (3, 2)
    for q in range(3):
        for t in range(2):
            x, y = flat(logits[q]), flat(targets[t])
            assert float(fc[q, t]) == pytest.approx(mean_focal(x, y, 0.3, 1.5), rel=1e-5)
            assert float(dc[q, t]) == pytest.approx(dice([sigmoid(v) for v in x], y), rel=1e-5)


def test_box_projection_targets_by_hand():
    # 3x4 grid: cell centres x = 1/8, 3/8, 5/8, 7/8 and y = 1/6, 1/2, 5/6
    boxes = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.3, 0.4, 0.32, 0.45], [0.0, 0.0, 1.0, 1.0]])
    tx, ty = box_projection_targets(boxes, 3, 4)
    assert tx.tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]]
    assert ty.tolist() == [[1, 1, 0], [0, 1, 0], [1, 1, 1]]


def test_projection_loss_and_cost_by_hand():
    """Soft probabilities: the max-projections are written out and the dice done by hand."""
    p = torch.tensor([[0.2, 0.9, 0.5, 0.1], [0.6, 0.3, 0.8, 0.1], [0.1, 0.1, 0.1, 0.7]])
    logits = torch.logit(p.double()).float()
    box = torch.tensor([[0.25, 0.0, 0.75, 0.5]])  # tx = [0, 1, 1, 0], ty = [1, 1, 0]
    # x-projection (column max) [0.6, 0.9, 0.8, 0.7]; y-projection (row max) [0.9, 0.8, 0.7]
    dx = 1 - (2 * (0.9 + 0.8) + 1) / (3.0 + 2 + 1)
    dy = 1 - (2 * (0.9 + 0.8) + 1) / (2.4 + 2 + 1)
    got = projection_loss(logits[None], box)
    assert float(got[0]) == pytest.approx(dx + dy, rel=1e-5)
    assert float(got[0]) == pytest.approx(projection(logits.tolist(), [0, 1, 1, 0], [1, 1, 0]),
                                          rel=1e-5)
    pair = projection_cost(torch.stack([logits, -logits]), torch.cat([box, box]))
    assert pair.shape == (2, 2) and float(pair[0, 1]) == pytest.approx(dx + dy, rel=1e-5)
    assert float(pair[1, 0]) == pytest.approx(
        float(projection_loss(-logits[None], box)[0]), rel=1e-5)


def test_sample_points_prefers_uncertain_points():
    """importance_sample_ratio of the points come from the most uncertain (|logit| small)
    oversampled candidates: with a mask certain everywhere except its left quarter, about
    0.75 + 0.25 * 1/4 of the points fall in that quarter (vs 1/4 for uniform points)."""
    torch.manual_seed(0)
    mask = torch.full((1, 32, 32), 20.0)
    mask[:, :, :8] = 0.0
    coords = sample_points(mask, 400, 3.0, 0.75)
    assert coords.shape == (1, 400, 2)
    assert float(coords.min()) >= 0 and float(coords.max()) <= 1
    share = float((coords[0, :, 0] < 0.25).float().mean())
    assert 0.7 <= share <= 0.9
    uniform = sample_points(mask, 400, 3.0, 0.0)
    assert float((uniform[0, :, 0] < 0.25).float().mean()) < 0.4
