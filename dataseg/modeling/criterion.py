"""Training loss of eq. (4): Hungarian matching, then class cross-entropy plus focal + dice
(mask supervision) or the projection loss (box supervision), on every decoder layer.

Returned losses are already multiplied by their weights and by the batch's dataset multiplier,
so the trainer just sums them. Everything runs in fp32 (autocast off). Images without targets
only get the no-object class term; mask/box terms are then an exact 0 still tied to the graph,
so losses stay finite and every parameter gets a gradient.
"""
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .losses import dice_loss, point_sample, projection_loss, sample_points, sigmoid_focal_loss
from .matcher import HungarianMatcher


def _num_targets_across_processes(targets, device) -> float:
    """Mean number of targets per process (all-reduced), at least 1."""
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


def _indices_to(indices, device):
    """The matcher's host index pairs (per set, per image) moved to ``device`` in one copy."""
    if device.type == "cpu":
        return indices
    flat = [t for per_set in indices for pair in per_set for t in pair]
    sizes = [len(t) for t in flat]
    flat = torch.cat(flat)
    if device.type == "cuda":
        flat = flat.pin_memory()  # so that the copy is asynchronous
    moved = flat.to(device, non_blocking=True).split(sizes)
    it = iter(moved)
    return [[(next(it), next(it)) for _ in per_set] for per_set in indices]


class SetCriterion(nn.Module):
    """Matching + losses for one (merged) prediction set and its auxiliary sets."""

    @configurable
    def __init__(self, *, matcher: HungarianMatcher, class_weight: float = 2.0,
                 focal_weight: float = 5.0, dice_weight: float = 5.0, proj_weight: float = 5.0,
                 no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 match_empty_merged: bool = True):
        super().__init__()
        self.matcher = matcher
        self.match_empty_merged = match_empty_merged
        self.class_weight = class_weight
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.proj_weight = proj_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DATASEG
        return {"matcher": HungarianMatcher(cfg), "class_weight": d.CLASS_WEIGHT,
                "focal_weight": d.FOCAL_WEIGHT, "dice_weight": d.DICE_WEIGHT,
                "proj_weight": d.PROJ_WEIGHT, "no_object_weight": d.NO_OBJECT_WEIGHT,
                "num_points": d.TRAIN_NUM_POINTS, "oversample_ratio": d.OVERSAMPLE_RATIO,
                "importance_sample_ratio": d.IMPORTANCE_SAMPLE_RATIO,
                "focal_alpha": d.FOCAL_ALPHA, "focal_gamma": d.FOCAL_GAMMA,
                "match_empty_merged": d.MATCH_EMPTY_MERGED}

    def loss_labels(self, outputs, targets, indices) -> torch.Tensor:
        """Weighted CE over K+1 classes on valid predictions; unmatched ones -> no-object."""
        logits = outputs["pred_logits"].float()
        b, q, k1 = logits.shape
        target_classes = torch.full((b, q), k1 - 1, dtype=torch.int64, device=logits.device)
        for i, (src, tgt) in enumerate(indices):
            target_classes[i, src.to(logits.device)] = targets[i]["labels"][tgt.to(
                logits.device)]
        class_w = logits.new_ones(k1)
        class_w[-1] = self.no_object_weight
        w = class_w[target_classes]
        valid = outputs.get("valid")
        if valid is not None:
            w = w * valid.float()
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")
        return (ce * w).sum() / w.sum().clamp(min=1e-6)

    def _matched(self, outputs, targets, indices, key):
        masks = outputs["pred_masks"]
        batch_idx = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)])
        src = masks[batch_idx.to(masks.device), torch.cat([s for s, _ in indices]).to(
            masks.device)]
        tgt = torch.cat([targets[i][key][t.to(targets[i][key].device)]
                         for i, (_, t) in enumerate(indices)])
        return src.float(), tgt.float()

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Focal + dice on uncertainty-sampled points of the matched masks."""
        src, tgt = self._matched(outputs, targets, indices, "masks")
        if len(src) == 0:
            zero = outputs["pred_masks"].float().sum() * 0.0
            return {"loss_focal": zero, "loss_dice": zero.clone()}
        coords = sample_points(src, self.num_points, self.oversample_ratio,
                               self.importance_sample_ratio)
        src_pts = point_sample(src[:, None], coords, align_corners=False)[:, 0]
        with torch.no_grad():
            tgt_pts = point_sample(tgt[:, None], coords, align_corners=False)[:, 0]
        focal = sigmoid_focal_loss(src_pts, tgt_pts, self.focal_alpha, self.focal_gamma)
        dice = dice_loss(src_pts.sigmoid(), tgt_pts)
        return {"loss_focal": self.focal_weight * focal.sum() / num_masks,
                "loss_dice": self.dice_weight * dice.sum() / num_masks}

    def loss_boxes(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Projection loss (eq. 3) of the matched masks against their boxes."""
        src, tgt = self._matched(outputs, targets, indices, "boxes")
        if len(src) == 0:
            return {"loss_proj": outputs["pred_masks"].float().sum() * 0.0}
        return {"loss_proj": self.proj_weight * projection_loss(src, tgt).sum() / num_masks}

    def _matching_outputs(self, outputs):
        """``outputs`` with empty merged entries (no member proposal) marked invalid for
        matching when ``match_empty_merged`` is False; unchanged otherwise."""
        m = outputs.get("num_merged", 0)
        if self.match_empty_merged or not m or "counts" not in outputs:
            return outputs
        valid = outputs["valid"].clone()
        valid[:, :m] &= outputs["counts"] > 0
        return {**outputs, "valid": valid}

    def _losses_one_set(self, outputs, targets, num_masks, indices):
        losses = {"loss_ce": self.class_weight * self.loss_labels(outputs, targets, indices)}
        if all("masks" in t for t in targets):
            losses.update(self.loss_masks(outputs, targets, indices, num_masks))
        elif all("boxes" in t for t in targets):
            losses.update(self.loss_boxes(outputs, targets, indices, num_masks))
        else:
            raise KeyError("SetCriterion: every target needs 'masks' (mask supervision) or "
                           "every target needs 'boxes' (box supervision)")
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]],
                loss_scale: float = 1.0) -> Dict[str, torch.Tensor]:
        """outputs: "pred_logits", "pred_masks", "valid", optional "aux_outputs" (list of the
        same); targets per image: "labels" (T,) and "masks" (T,H,W) or "boxes" (T,4) XYXY
        normalised to the padded image. Returns weighted losses; aux ones suffixed "_<i>"."""
        device = outputs["pred_logits"].device
        # bool masks -> float once here, not again for every decoder layer's matching and loss
        targets = [{**t, "masks": t["masks"].float()} if "masks" in t else t for t in targets]
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = _num_targets_across_processes(targets, device)
            sets = [outputs] + list(outputs.get("aux_outputs", []))
            # every set's matching at once: one host copy of all cost matrices, then the
            # assignments back to the device in one copy
            indices = _indices_to(self.matcher.match_sets(
                [self._matching_outputs(o) for o in sets], targets), device)
            losses = self._losses_one_set(outputs, targets, num_masks, indices[0])
            for i, aux in enumerate(sets[1:]):
                for k, v in self._losses_one_set(aux, targets, num_masks,
                                                 indices[i + 1]).items():
                    losses[f"{k}_{i}"] = v
            if loss_scale != 1.0:
                losses = {k: v * loss_scale for k, v in losses.items()}
        return losses
