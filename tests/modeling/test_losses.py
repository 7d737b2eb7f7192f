"""Losses of eq. (3)-(4) and their pairwise costs on hand-made tensors."""
import torch

from dataseg.modeling.losses import projection_loss


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
