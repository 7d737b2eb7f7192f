"""Hungarian matcher with the cost of eq. (5): -lambda_ce * p(class) + lambda_focal * focal +
lambda_dice * dice (mask supervision) or + lambda_proj * projection (box supervision).

Runs in fp32 (autocast off) and without gradients; mask costs use points sampled uniformly at
random, shared by all predictions and targets of one image (Mask2Former's recipe).
``match_sets`` matches all decoder layers of a step together: batched cost matrices, one
device-to-host copy, the assignments solved on the host (issue 22).
"""
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment
from torch import nn

from .losses import (
    box_projection_targets,
    dice_cost,
    focal_cost,
    focal_dice_costs,
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
    def match_sets(self, sets, targets: List[Dict[str, torch.Tensor]], as_numpy: bool = False
                   ) -> List[List[Tuple[torch.Tensor, torch.Tensor]]]:
        """``forward`` for several prediction sets of the same images (the decoder layers).

        ``sets``: a dict of stacked tensors "pred_logits" (S,B,Q,K+1), "pred_masks"
        (S,B,Q,H,W), optional "valid" (S,B,Q), or a list of S ``forward`` dicts.

        The cost matrices of every set and image are computed in a few batched calls (sets in
        chunks of at most ``CHUNK_ELEMENTS`` sampled values per tensor), copied to the host in
        ONE transfer with the query indices they belong to, and solved there; each
        (set, image) gets the same cost as ``cost_matrix`` on its valid queries, with its own
        random points (drawn set by set, image by image over the images with targets, as
        ``forward`` always drew them). Returns ``forward``'s result per set (numpy int64
        arrays instead of tensors with ``as_numpy``: no tensor op per pair).

        On the CPU the valid queries are gathered first (their count is read on the host,
        which costs nothing there), so no cost is computed for queries that cannot match;
        on an accelerator the costs of all Q queries are computed (cheap there) and the
        invalid ones dropped on the host, so the step waits for the device only once.
        """
        if isinstance(sets, (list, tuple)):
            sets = {"pred_logits": torch.stack([o["pred_logits"] for o in sets]),
                    "pred_masks": torch.stack([o["pred_masks"] for o in sets]),
                    **({"valid": torch.stack([o["valid"] for o in sets])}
                       if all(o.get("valid") is not None for o in sets) else {})}
        logits, masks = sets["pred_logits"], sets["pred_masks"]
        device = logits.device
        ns, b, q = logits.shape[:3]
        n_tgt = [len(t["labels"]) for t in targets]
        t_max = max(n_tgt, default=0)
        empty = np.zeros(0, dtype=np.int64)
        if t_max == 0:
            return self._as_tensors([[(empty, empty) for _ in targets] for _ in range(ns)],
                                    as_numpy)
        valid = sets.get("valid")
        if valid is None:
            valid = torch.ones(ns, b, q, dtype=torch.bool, device=device)
        with torch.autocast(device_type=device.type, enabled=False):
            if device.type == "cpu":
                # valid queries first (stable: in query order), then only as many as the
                # fullest (set, image) has
                order = torch.argsort((~valid).to(torch.uint8), dim=-1, stable=True)
                v = max(int(valid.sum(-1).max()), 1)
                order = order[..., :v]
                logits = logits.gather(2, order[..., None].expand(-1, -1, -1, logits.shape[-1]))
                masks = masks.gather(2, order[..., None, None].expand(
                    -1, -1, -1, *masks.shape[-2:]))
                valid = valid.gather(2, order)
            else:
                order = torch.arange(q, device=device).expand(ns, b, q)
            labels = torch.zeros(b, t_max, dtype=torch.int64, device=device)
            for i, t in enumerate(targets):
                labels[i, :n_tgt[i]] = t["labels"]
            boxes = "masks" not in targets[0]
            if not boxes and any("masks" not in t for t in targets):
                raise KeyError("HungarianMatcher: target needs 'masks' or 'boxes'")
            # one (P, 2) draw per (set, image with targets), set by set, image by image
            with_tgt = [i for i in range(b) if n_tgt[i]]
            coords = None if boxes else torch.rand(ns, len(with_tgt), self.num_points, 2,
                                                   device=device)
            step = self.chunk_sets(b, logits.shape[2])
            costs = [self._batched_cost(logits[s0:s0 + step], masks[s0:s0 + step], targets,
                                        labels, n_tgt, with_tgt,
                                        None if boxes else coords[s0:s0 + step])
                     for s0 in range(0, ns, step)]
            # the one device-to-host copy of the matching: costs, query ids and validity
            packed = torch.cat([torch.cat(costs), order[..., None].float(),
                                valid[..., None].float()], -1).cpu()
        packed = np.nan_to_num(packed.numpy(), nan=1e8, posinf=1e8, neginf=-1e8)
        all_indices = []
        for s in range(ns):
            indices = []
            for i in range(b):
                rows_ok = np.flatnonzero(packed[s, i, :, t_max + 1] > 0)
                if n_tgt[i] == 0 or len(rows_ok) == 0:
                    indices.append((empty, empty))
                    continue
                rows, cols = linear_sum_assignment(packed[s, i, rows_ok, :n_tgt[i]])
                q_idx = packed[s, i, rows_ok[rows], t_max].astype(np.int64)
                indices.append((q_idx, cols.astype(np.int64)))
            all_indices.append(indices)
        return self._as_tensors(all_indices, as_numpy)

    @staticmethod
    def _as_tensors(indices, as_numpy: bool):
        if as_numpy:
            return indices
        return [[(torch.from_numpy(r), torch.from_numpy(c)) for r, c in per] for per in indices]

    #: at most this many sampled values (sets x images x queries x points) per chunk tensor
    CHUNK_ELEMENTS = 2 ** 24

    def chunk_sets(self, b: int, q: int) -> int:
        return max(1, self.CHUNK_ELEMENTS // max(1, b * q * self.num_points))

    def _batched_cost(self, logits, masks, targets, labels, n_tgt, with_tgt, coords
                      ) -> torch.Tensor:
        """(S, B, Q, t_max) costs of stacked ``logits`` (S,B,Q,K+1) and ``masks``
        (S,B,Q,H,W) (padded target columns are garbage); ``coords`` (S, B', P, 2): the
        points of the B' images with targets (``with_tgt``), None for box targets."""
        ns, b, q, _ = logits.shape
        t_max = labels.shape[1]
        prob = logits.float().softmax(-1)
        cost = -self.cost_class * prob.gather(-1, labels[None, :, None, :].expand(ns, b, q, t_max))
        if coords is None:
            h, w = masks.shape[-2:]
            tx = labels.new_zeros((b, t_max, w), dtype=torch.float32)
            ty = labels.new_zeros((b, t_max, h), dtype=torch.float32)
            for i in with_tgt:
                tx[i, :n_tgt[i]], ty[i, :n_tgt[i]] = box_projection_targets(
                    targets[i]["boxes"], h, w)
            probs = masks.float().sigmoid()
            return cost + self.cost_proj * (dice_cost(probs.amax(dim=-2), tx[None])
                                            + dice_cost(probs.amax(dim=-1), ty[None]))
        p = self.num_points
        if len(with_tgt) == b:
            grid = coords
        else:  # images without targets get points too (their costs are not read)
            grid = logits.new_zeros(ns, b, p, 2)
            grid[:, with_tgt] = coords
        # (S*B, Q, H, W) sampled at each (set, image)'s points -> (S, B, Q, P)
        pred_pts = point_sample(masks.float().flatten(0, 1), grid.flatten(0, 1),
                                align_corners=False).view(ns, b, q, p)
        tgt_pts = logits.new_zeros(ns, b, t_max, p, dtype=torch.float32)
        for j, i in enumerate(with_tgt):
            # (T, H, W) at all sets' points of image i at once: (T, S*P)
            pts = point_sample(targets[i]["masks"].float()[None],
                               coords[:, j].reshape(1, ns * p, 2), align_corners=False)[0]
            tgt_pts[:, i, :n_tgt[i]] = pts.view(n_tgt[i], ns, p).transpose(0, 1)
        focal, dice = focal_dice_costs(pred_pts, tgt_pts, self.focal_alpha, self.focal_gamma)
        return cost.add_(focal, alpha=self.cost_focal).add_(dice, alpha=self.cost_dice)
