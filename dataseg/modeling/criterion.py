"""Training loss of eq. (4): Hungarian matching, then class cross-entropy plus focal + dice
(mask supervision) or the projection loss (box supervision), on every decoder layer.

Returned losses are already multiplied by their weights and by the batch's dataset multiplier,
so the trainer just sums them. Everything runs in fp32 (autocast off). Images without targets
only get the no-object class term; mask/box terms are then an exact 0 still tied to the graph,
so losses stay finite and every parameter gets a gradient.
"""
from typing import Dict, List

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .losses import dice_loss, point_sample, projection_loss, sample_points, sigmoid_focal_loss
from .matcher import HungarianMatcher
from .transfer import host_to_device


def _num_targets_across_processes(targets, device):
    """Mean number of targets per process, at least 1: a float in one process; a 0-dim
    device tensor when distributed (all-reduced there, and not read on the host: no sync)."""
    n = float(sum(len(t["labels"]) for t in targets))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        n = torch.full((), n, device=device)  # filled on the device: no host copy
        dist.all_reduce(n)
        return (n / dist.get_world_size()).clamp(min=1.0)
    return max(n, 1.0)


def stack_sets(outputs: Dict) -> Dict:
    """One prediction set (B, Q, ...) with optional "aux_outputs" (a list of the same) ->
    the stacked layout (S, B, Q, ...) that ``SetCriterion`` works on, the aux sets first and
    the main set last. A dict already stacked (4-dim "pred_logits") is returned as is."""
    if outputs["pred_logits"].dim() == 4:
        return outputs
    sets = list(outputs.get("aux_outputs", [])) + [outputs]
    out = {"pred_logits": torch.stack([o["pred_logits"] for o in sets]),
           "pred_masks": torch.stack([o["pred_masks"] for o in sets])}
    if any(o.get("valid") is not None for o in sets):
        out["valid"] = torch.stack([
            o["valid"] if o.get("valid") is not None else
            torch.ones(o["pred_logits"].shape[:2], dtype=torch.bool,
                       device=o["pred_logits"].device) for o in sets])
    if outputs.get("num_merged"):
        out["num_merged"] = outputs["num_merged"]
        out["counts"] = torch.stack([o["counts"] for o in sets])
    return out


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

    # ------------------------------------------------------------ losses of S sets at once
    def _class_losses(self, logits, valid, labels, match) -> torch.Tensor:
        """Weighted CE over K+1 classes on valid predictions, unmatched ones -> no-object:
        (S,B,Q,K+1) logits -> (S,) one loss per set. ``match`` = (set, image, query,
        target) index tensors of every matched pair; ``labels`` all targets' classes."""
        logits = logits.float()
        s, b, q, k1 = logits.shape
        target_classes = torch.full((s, b, q), k1 - 1, dtype=torch.int64, device=logits.device)
        set_ids, img_ids, q_ids, t_ids = match
        target_classes[set_ids, img_ids, q_ids] = labels[t_ids]
        class_w = torch.full((k1,), 1.0, device=logits.device)
        class_w[-1] = self.no_object_weight
        w = class_w[target_classes]
        if valid is not None:
            w = w * valid
        ce = F.cross_entropy(logits.view(-1, k1), target_classes.view(-1), reduction="none")
        w = w.view(s, -1)
        return (ce.view(s, -1) * w).sum(1) / w.sum(1).clamp(min=1e-6)

    def _mask_losses(self, masks, all_masks, match, num_sets, num_masks):
        """Focal + dice on uncertainty-sampled points of every set's matched masks:
        (S,) each, divided by the number of targets."""
        set_ids, img_ids, q_ids, t_ids = match
        if len(set_ids) == 0:
            zero = (masks.float().sum() * 0.0).expand(num_sets)
            return zero, zero.clone()
        src = masks[set_ids, img_ids, q_ids].float()
        tgt = all_masks[t_ids]
        coords = sample_points(src, self.num_points, self.oversample_ratio,
                               self.importance_sample_ratio)
        src_pts = point_sample(src[:, None], coords, align_corners=False)[:, 0]
        with torch.no_grad():
            tgt_pts = point_sample(tgt[:, None], coords, align_corners=False)[:, 0]
        focal = sigmoid_focal_loss(src_pts, tgt_pts, self.focal_alpha, self.focal_gamma)
        dice = dice_loss(src_pts.sigmoid(), tgt_pts)
        per_set = src_pts.new_zeros(2, num_sets).index_add_(
            1, set_ids, torch.stack([focal, dice]))
        return (self.focal_weight * per_set[0] / num_masks,
                self.dice_weight * per_set[1] / num_masks)

    def _box_losses(self, masks, all_boxes, match, num_sets, num_masks):
        """Projection loss (eq. 3) of every set's matched masks against their boxes: (S,)."""
        set_ids, img_ids, q_ids, t_ids = match
        if len(set_ids) == 0:
            return (masks.float().sum() * 0.0).expand(num_sets)
        proj = projection_loss(masks[set_ids, img_ids, q_ids], all_boxes[t_ids])
        return self.proj_weight * proj.new_zeros(num_sets).index_add_(0, set_ids, proj) \
            / num_masks

    @staticmethod
    def _flat_indices(indices, targets, device):
        """The matcher's (pred, target) pairs of every set and image (numpy, ``as_numpy``) as
        four flat index tensors (set, image, query, target among all targets of the batch),
        on ``device`` in one copy."""
        offsets = np.cumsum([0] + [len(t["labels"]) for t in targets])
        parts = [(np.full(len(src), s), np.full(len(src), i), src, tgt + offsets[i])
                 for s, per_set in enumerate(indices) for i, (src, tgt) in enumerate(per_set)]
        flat = (np.concatenate([np.stack(p) for p in parts], 1) if parts else
                np.zeros((4, 0))).astype(np.int64)
        return host_to_device(torch.from_numpy(flat), device).unbind(0)

    def _matching_outputs(self, outputs):
        """``outputs`` with empty merged entries (no member proposal) marked invalid for
        matching when ``match_empty_merged`` is False; unchanged otherwise."""
        m = outputs.get("num_merged", 0)
        if self.match_empty_merged or not m or "counts" not in outputs:
            return outputs
        valid = outputs["valid"].clone()
        valid[..., :m] &= outputs["counts"] > 0
        return {**outputs, "valid": valid}

    def loss_labels(self, outputs, targets, indices) -> torch.Tensor:
        """The class loss of one prediction set (B, Q, K+1) and its matcher ``indices``."""
        device = outputs["pred_logits"].device
        labels = torch.cat([t["labels"] for t in targets]).to(device)
        valid = outputs.get("valid")
        match = self._flat_indices([[(np.asarray(r), np.asarray(c)) for r, c in indices]],
                                   targets, device)
        return self._class_losses(outputs["pred_logits"][None], None if valid is None else
                                  valid[None], labels, match)[0]

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]],
                loss_scale: float = 1.0) -> Dict[str, torch.Tensor]:
        """outputs: the stacked predictions of S sets, "pred_logits" (S,B,Q,K+1),
        "pred_masks" (S,B,Q,H,W), "valid" (S,B,Q), the main (last-layer) set last, as the
        model gives them; or one set (B,Q,...) with optional "aux_outputs" (a list of the
        same). Targets per image: "labels" (T,) and "masks" (T,H,W) or "boxes" (T,4) XYXY
        normalised to the padded image. Returns weighted losses: the main set's as
        "loss_ce", ...; the other sets' suffixed "_0", "_1", ... in order.

        Every set is matched (one host copy of all cost matrices) and its losses computed in
        one batched computation over all sets; each set's loss is what it would be alone."""
        outputs = stack_sets(outputs)
        device = outputs["pred_logits"].device
        num_sets = outputs["pred_logits"].shape[0]
        if all("masks" in t for t in targets):
            kind = "masks"
        elif all("boxes" in t for t in targets):
            kind = "boxes"
        else:
            raise KeyError("SetCriterion: every target needs 'masks' (mask supervision) or "
                           "every target needs 'boxes' (box supervision)")
        if kind == "masks":
            # bool masks -> float once here (one tensor of all targets), not again for every
            # decoder layer's matching and loss; each image's masks are a view of it
            all_masks = torch.cat([t["masks"] for t in targets]).float()
            targets = [{**t, "masks": m} for t, m in
                       zip(targets, all_masks.split([len(t["labels"]) for t in targets]))]
        with torch.autocast(device_type=device.type, enabled=False):
            num_masks = _num_targets_across_processes(targets, device)
            indices = self.matcher.match_sets(self._matching_outputs(outputs), targets,
                                              as_numpy=True)
            match = self._flat_indices(indices, targets, device)
            labels = torch.cat([t["labels"] for t in targets])
            terms = {"loss_ce": self.class_weight * self._class_losses(
                outputs["pred_logits"], outputs.get("valid"), labels, match)}
            if kind == "masks":
                terms["loss_focal"], terms["loss_dice"] = self._mask_losses(
                    outputs["pred_masks"], all_masks, match, num_sets, num_masks)
            else:
                terms["loss_proj"] = self._box_losses(
                    outputs["pred_masks"], torch.cat([t["boxes"] for t in targets]).float(),
                    match, num_sets, num_masks)
            values = torch.stack(list(terms.values()))  # (terms, S)
            if loss_scale != 1.0:
                values = values * loss_scale
            # every scalar in one unbind, set by set; the main set first, then the aux sets
            flat = values.t().reshape(-1).unbind(0)
        n = len(terms)
        losses = dict(zip(terms, flat[(num_sets - 1) * n:]))
        for s in range(num_sets - 1):
            losses.update({f"{k}_{s}": v for k, v in zip(terms, flat[s * n:(s + 1) * n])})
        return losses
