"""Hungarian matcher with the cost of eq. (5): -lambda_ce * p(class) + lambda_focal * focal +
lambda_dice * dice (mask supervision) or + lambda_proj * projection (box supervision).

Runs in fp32 (autocast off) and without gradients; mask costs use points sampled uniformly at
random, shared by all predictions and targets of one image (Mask2Former's recipe).
``match_sets`` matches all decoder layers of a step together: batched cost matrices, one
device-to-host copy, the assignments solved on the host (issue 22).
"""
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment
from torch import nn

from .losses import (
    box_projection_targets,
    dice_cost,
    focal_cost,
    point_sample,
    projection_cost,
)


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
        return self.match_sets([outputs], targets)[0]

    @torch.no_grad()
    def match_sets(self, sets: List[Dict[str, torch.Tensor]],
                   targets: List[Dict[str, torch.Tensor]]
                   ) -> List[List[Tuple[torch.Tensor, torch.Tensor]]]:
        """``forward`` for several prediction sets of the same images (the decoder layers).

        The cost matrices of every set and image are computed in a few batched calls (sets in
        chunks of at most ``CHUNK_ELEMENTS`` sampled values per tensor), copied to the host in
        ONE transfer with the valid-query masks, and solved there; each (set, image) gets the
        same cost as ``cost_matrix`` and its own random points (drawn set by set, image by
        image, as ``forward`` always drew them). Returns ``forward``'s result per set."""
        device = sets[0]["pred_logits"].device
        b, q = sets[0]["pred_logits"].shape[:2]
        n_tgt = [len(t["labels"]) for t in targets]
        t_max = max(n_tgt, default=0)
        empty = torch.zeros(0, dtype=torch.int64)
        if t_max == 0:
            return [[(empty, empty) for _ in targets] for _ in sets]
        valid = [o.get("valid") for o in sets]
        with torch.autocast(device_type=device.type, enabled=False):
            # (S, B, Q): which queries take part (cheap; on the device)
            valid_all = torch.stack([v if v is not None else
                                     torch.ones(b, q, dtype=torch.bool, device=device)
                                     for v in valid])
            labels = torch.zeros(b, t_max, dtype=torch.int64, device=device)
            for i, t in enumerate(targets):
                labels[i, :n_tgt[i]] = t["labels"]
            boxes = "masks" not in targets[0]
            costs = [self._batched_cost(sets[s0:s0 + self.chunk_sets(b, q)], targets, labels,
                                        n_tgt, t_max, boxes)
                     for s0 in range(0, len(sets), self.chunk_sets(b, q))]
            # the one device-to-host copy of the matching: costs and valid masks together
            packed = torch.cat([torch.cat(costs), valid_all[..., None].float()], -1).cpu()
        packed = torch.nan_to_num(packed, nan=1e8, posinf=1e8, neginf=-1e8)
        all_indices = []
        for s in range(len(sets)):
            indices = []
            for i in range(b):
                q_idx = torch.nonzero(packed[s, i, :, -1] > 0)[:, 0]
                if n_tgt[i] == 0 or len(q_idx) == 0:
                    indices.append((empty, empty))
                    continue
                cost = packed[s, i, q_idx, :n_tgt[i]]
                rows, cols = linear_sum_assignment(cost.numpy())
                indices.append((q_idx[torch.as_tensor(rows, dtype=torch.int64)],
                                torch.as_tensor(cols, dtype=torch.int64)))
            all_indices.append(indices)
        return all_indices

    #: at most this many sampled values (sets x images x queries x points) per chunk tensor
    CHUNK_ELEMENTS = 2 ** 24

    def chunk_sets(self, b: int, q: int) -> int:
        return max(1, self.CHUNK_ELEMENTS // max(1, b * q * self.num_points))

    def _batched_cost(self, sets, targets, labels, n_tgt, t_max, boxes) -> torch.Tensor:
        """(S, B, Q, t_max) costs of ``sets`` (padded target columns are garbage)."""
        device = labels.device
        logits = torch.stack([o["pred_logits"] for o in sets]).float()
        ns, b, q, k1 = logits.shape
        prob = logits.softmax(-1)
        cost = -self.cost_class * prob.gather(-1, labels[None, :, None, :].expand(ns, b, q, t_max))
        if boxes:
            h, w = sets[0]["pred_masks"].shape[-2:]
            tx = labels.new_zeros((b, t_max, w), dtype=torch.float32)
            ty = labels.new_zeros((b, t_max, h), dtype=torch.float32)
            for i, t in enumerate(targets):
                if n_tgt[i]:
                    tx[i, :n_tgt[i]], ty[i, :n_tgt[i]] = box_projection_targets(t["boxes"], h, w)
            # per set (full-resolution sigmoid masks are large), x and y max-projections
            probs = [o["pred_masks"].float().sigmoid() for o in sets]
            px = torch.stack([p.amax(dim=-2) for p in probs])
            py = torch.stack([p.amax(dim=-1) for p in probs])
            return cost + self.cost_proj * (dice_cost(px, tx[None]) + dice_cost(py, ty[None]))
        if any("masks" not in t for t in targets):
            raise KeyError("HungarianMatcher: target needs 'masks' or 'boxes'")
        # one (1, P, 2) draw per (set, image) with targets, set by set, image by image
        zeros = torch.zeros(1, self.num_points, 2, device=device)
        coords = [[torch.rand(1, self.num_points, 2, device=device) if n_tgt[i] else zeros
                   for i in range(b)] for _ in sets]
        pred_pts = torch.stack([
            point_sample(o["pred_masks"].float(), torch.cat(c), align_corners=False)
            for o, c in zip(sets, coords)])  # (S, B, Q, P)
        tgt_pts = logits.new_zeros(ns, b, t_max, self.num_points)
        for i, t in enumerate(targets):
            if n_tgt[i]:
                grid = torch.cat([c[i] for c in coords], 1)  # (1, S*P, 2)
                pts = point_sample(t["masks"].float()[None], grid, align_corners=False)[0]
                tgt_pts[:, i, :n_tgt[i]] = pts.view(n_tgt[i], ns, -1).transpose(0, 1)
        cost = cost + self.cost_focal * focal_cost(pred_pts, tgt_pts, self.focal_alpha,
                                                   self.focal_gamma)
        return cost + self.cost_dice * dice_cost(pred_pts.sigmoid(), tgt_pts)
