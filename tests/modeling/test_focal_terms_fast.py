"""The focal terms' log-sigmoid form equals the BCE-with-logits form it replaced (speed change)."""
import torch
import torch.nn.functional as F

from dataseg.modeling.losses import focal_cost, sigmoid_focal_loss


def _old_focal_terms(logits, alpha, gamma):
    """The previous formula: BCE with logits against tensors of ones and of zeros."""
    p = logits.sigmoid()
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return pos * (1 - p) ** gamma * alpha, neg * p ** gamma * (1 - alpha)


def test_focal_loss_and_cost_match_the_bce_form_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(7, 300) * 8
    logits[0, :4] = torch.tensor([-60.0, -20.0, 20.0, 60.0])  # saturated sigmoid
    targets = (torch.rand(7, 300) > 0.5).float()
    targets[1] = torch.rand(300)  # soft targets (bilinear point samples at mask edges)
    tgt_set = (torch.rand(5, 300) > 0.3).float()

    new = logits.clone().requires_grad_()
    loss_new = sigmoid_focal_loss(new, targets, 0.25, 2.0)
    cost_new = focal_cost(new, tgt_set, 0.25, 2.0)
    (loss_new.sum() + cost_new.sum()).backward()

    old = logits.clone().requires_grad_()
    pos, neg = _old_focal_terms(old, 0.25, 2.0)
    loss_old = (pos * targets + neg * (1 - targets)).mean(-1)
    cost_old = (pos @ tgt_set.T + neg @ (1 - tgt_set).T) / logits.shape[-1]
    (loss_old.sum() + cost_old.sum()).backward()

    torch.testing.assert_close(loss_new, loss_old, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cost_new, cost_old, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(new.grad, old.grad, rtol=1e-5, atol=1e-8)
    assert loss_new.min() > 0 and torch.isfinite(new.grad).all()
