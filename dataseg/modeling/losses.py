"""Mask and box losses of eq. (3)-(4) and their pairwise forms for matching (eq. 5).

All functions take raw mask logits and work in fp32. Per-mask losses are means over points
(focal) or one dice value per mask; callers sum over masks and divide by the number of
targets. Pairwise ``*_cost`` functions return (Q, T) matrices with the same per-pair values.
"""
import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

__all__ = [
    "sigmoid_focal_loss", "dice_loss", "focal_cost", "dice_cost", "focal_dice_costs",
    "box_projection_targets",
    "projection_loss", "projection_cost", "sample_points", "point_sample",
]


def _focal_terms(logits: torch.Tensor, alpha: float, gamma: float, with_probs: bool = False):
    """Per-element focal loss for target 1 and for target 0 (and sigmoid(logits) when
    ``with_probs``), from one log-sigmoid and one exp: log p = logsigmoid(x),
    log(1 - p) = log p - x, p = exp(log p) (BCE-with-logits against 1 and 0 without target
    tensors; two transcendental passes instead of four). Without gradients the work is done
    in place."""
    inplace = not (torch.is_grad_enabled() and logits.requires_grad)
    log_p = F.logsigmoid(logits)
    log_1mp = log_p - logits
    p = log_p.exp()
    if inplace:
        neg = p.pow(gamma).mul_(log_1mp).mul_(-(1 - alpha) if alpha >= 0 else -1.0)
        pos = torch.sub(1.0, p).pow_(gamma).mul_(log_p).mul_(-alpha if alpha >= 0 else -1.0)
    else:
        neg = p.pow(gamma) * log_1mp * (-(1 - alpha) if alpha >= 0 else -1.0)
        pos = (1 - p).pow(gamma) * log_p * (-alpha if alpha >= 0 else -1.0)
    return (pos, neg, p) if with_probs else (pos, neg)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal BCE (Lin et al.), mean over the last dim: (Q, P), (Q, P) -> (Q,)."""
    pos, neg = _focal_terms(logits, alpha, gamma)
    return (pos * targets + neg * (1 - targets)).mean(-1)


def focal_cost(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Pairwise focal loss: (..., Q, P) logits, (..., T, P) targets -> (..., Q, T) (leading
    dims: a batch of independent matrices)."""
    pos, neg = _focal_terms(logits, alpha, gamma)
    return (pos @ targets.transpose(-1, -2) + neg @ (1 - targets).transpose(-1, -2)) \
        / logits.shape[-1]


def focal_dice_costs(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                     gamma: float = 2.0):
    """``focal_cost(logits, targets)`` and ``dice_cost(sigmoid(logits), targets)`` from one
    pass over the logits (the sigmoid is the focal terms' own): for matching, no gradients.
    sum_p pos t + neg (1 - t) = (pos - neg) . t + sum_p neg: one product per matrix."""
    pos, neg, p = _focal_terms(logits, alpha, gamma, with_probs=True)
    t = targets.transpose(-1, -2)
    focal = (pos.sub_(neg) @ t).add_(neg.sum(-1, keepdim=True)).div_(logits.shape[-1])
    num = (p @ t).mul_(2)
    den = p.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return focal, 1 - (num + 1) / (den + 1)


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - (2 p.t + 1) / (sum p + sum t + 1) over the last dim: (Q, P), (Q, P) -> (Q,)."""
    num = 2 * (probs * targets).sum(-1)
    den = probs.sum(-1) + targets.sum(-1)
    return 1 - (num + 1) / (den + 1)


def dice_cost(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss: (..., Q, P) probabilities, (..., T, P) targets -> (..., Q, T)."""
    num = 2 * probs @ targets.transpose(-1, -2)
    den = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (num + 1) / (den + 1)


def box_projection_targets(boxes: torch.Tensor, height: int, width: int):
    """x and y projections of boxes on an HxW grid.

    boxes: (T, 4) XYXY normalised to [0, 1] of the grid's extent. A cell is inside when its
    centre is; a box thinner than one cell still covers the cell holding its centre, so every
    non-degenerate box has a non-empty projection. Returns (T, W) and (T, H) float.
    """
    dev = boxes.device
    xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5) / width
    ys = (torch.arange(height, device=dev, dtype=torch.float32) + 0.5) / height
    b = boxes.float()
    tx = (xs[None] >= b[:, 0:1]) & (xs[None] <= b[:, 2:3])
    ty = (ys[None] >= b[:, 1:2]) & (ys[None] <= b[:, 3:4])
    cx = ((b[:, 0] + b[:, 2]) / 2 * width).long().clamp(0, width - 1)
    cy = ((b[:, 1] + b[:, 3]) / 2 * height).long().clamp(0, height - 1)
    ar = torch.arange(len(b), device=dev)
    tx[ar, cx] = True
    ty[ar, cy] = True
    return tx.float(), ty.float()


def projection_loss(mask_logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Eq. (3): dice on the x and y max-projections of sigmoid(mask) against the box.

    mask_logits: (Q, H, W); boxes: (Q, 4) XYXY normalised to the mask's extent. Returns (Q,).
    """
    probs = mask_logits.float().sigmoid()
    tx, ty = box_projection_targets(boxes, probs.shape[-2], probs.shape[-1])
    return dice_loss(probs.amax(dim=-2), tx) + dice_loss(probs.amax(dim=-1), ty)


def projection_cost(mask_logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise eq. (3): (Q, H, W) logits, (T, 4) normalised boxes -> (Q, T)."""
    probs = mask_logits.float().sigmoid()
    tx, ty = box_projection_targets(boxes, probs.shape[-2], probs.shape[-1])
    return dice_cost(probs.amax(dim=-2), tx) + dice_cost(probs.amax(dim=-1), ty)


def sample_points(mask_logits: torch.Tensor, num_points: int, oversample_ratio: float,
                  importance_sample_ratio: float) -> torch.Tensor:
    """Point coords (Q, P, 2) in [0, 1] chosen by uncertainty -|logit| (Mask2Former's recipe)."""
    with torch.no_grad():
        return get_uncertain_point_coords_with_randomness(
            mask_logits[:, None], lambda x: -x.abs(), num_points, oversample_ratio,
            importance_sample_ratio)
