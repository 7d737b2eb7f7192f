"""Hungarian matcher with the cost of eq. (5): -lambda_ce * p(class) + lambda_focal * focal +
lambda_dice * dice (mask supervision) or + lambda_proj * projection (box supervision).

Runs in fp32 (autocast off) and without gradients; mask costs use points sampled uniformly at
random, shared by all predictions and targets of one image (Mask2Former's recipe).
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment
from torch import nn

from .losses import dice_cost, focal_cost, point_sample, projection_cost


class HungarianMatcher(nn.Module):
    """One-to-one assignment of (merged) predictions to the targets of each image."""

    @configurable
    def __init__(self, *, cost_class: float = 2.0, cost_focal: float = 5.0,
                 cost_dice: float = 5.0, cost_proj: float = 5.0, num_points: int = 12544,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.cost_class = cost_class
        self.cost_focal = cost_focal
        self.cost_dice = cost_dice
        self.cost_proj = cost_proj
        self.num_points = num_points
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DATASEG
        return {"cost_class": d.CLASS_WEIGHT, "cost_focal": d.FOCAL_WEIGHT,
                "cost_dice": d.DICE_WEIGHT, "cost_proj": d.PROJ_WEIGHT,
                "num_points": d.TRAIN_NUM_POINTS, "focal_alpha": d.FOCAL_ALPHA,
                "focal_gamma": d.FOCAL_GAMMA}

    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor,
                    target: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(Q, T) cost for one image; ``target`` has "labels" and "masks" (T,H,W) or "boxes"."""
        labels = target["labels"]
        cost = -self.cost_class * logits.float().softmax(-1)[:, labels]
        if "masks" in target:
            tgt = target["masks"].float()
            coords = torch.rand(1, self.num_points, 2, device=masks.device)
            pred_pts = point_sample(masks[:, None].float(), coords.expand(len(masks), -1, -1),
                                    align_corners=False)[:, 0]
            tgt_pts = point_sample(tgt[:, None], coords.expand(len(tgt), -1, -1),
                                   align_corners=False)[:, 0]
            cost = cost + self.cost_focal * focal_cost(pred_pts, tgt_pts, self.focal_alpha,
                                                       self.focal_gamma)
            cost = cost + self.cost_dice * dice_cost(pred_pts.sigmoid(), tgt_pts)
        elif "boxes" in target:
            cost = cost + self.cost_proj * projection_cost(masks, target["boxes"])
        else:
            raise KeyError("HungarianMatcher: target needs 'masks' or 'boxes'")
        return cost

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
                ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """outputs: "pred_logits" (B,Q,K+1), "pred_masks" (B,Q,H,W), optional "valid" (B,Q).

        Returns per image (pred_idx, tgt_idx) int64 tensors indexing the full Q axis.
        """
        device = outputs["pred_logits"].device
        valid: Optional[torch.Tensor] = outputs.get("valid")
        indices = []
        with torch.autocast(device_type=device.type, enabled=False):
            for b, target in enumerate(targets):
                n_tgt = len(target["labels"])
                q_idx = torch.arange(outputs["pred_logits"].shape[1], device=device)
                if valid is not None:
                    q_idx = q_idx[valid[b]]
                if n_tgt == 0 or len(q_idx) == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    indices.append((empty, empty))
                    continue
                cost = self.cost_matrix(outputs["pred_logits"][b, q_idx],
                                        outputs["pred_masks"][b, q_idx], target)
                cost = torch.nan_to_num(cost.cpu(), nan=1e8, posinf=1e8, neginf=-1e8)
                rows, cols = linear_sum_assignment(cost.numpy())
                indices.append((q_idx.cpu()[torch.as_tensor(rows, dtype=torch.int64)],
                                torch.as_tensor(cols, dtype=torch.int64)))
        return indices
