"""Per-task inference from (merged) predictions of one image, in Detectron2's output formats.

All functions take class logits (Q, K+1) (background last) and mask logits (Q, H, W) already
resized to the output size; ``resize_mask_logits`` does that resizing as Detectron2 models do
(crop the padding, then resize to the original "height"/"width").
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances


def resize_mask_logits(mask_logits: torch.Tensor, padded_size: Tuple[int, int],
                       image_size: Tuple[int, int], output_size: Tuple[int, int]):
    """(Q, h, w) stride-4 logits -> (Q, H_out, W_out): upsample to the padded input, crop the
    image region, resize to the original size (skipped when it already matches)."""
    x = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear",
                      align_corners=False)[0]
    x = x[:, :image_size[0], :image_size[1]]
    if tuple(image_size) != tuple(output_size):
        x = F.interpolate(x[None], size=output_size, mode="bilinear", align_corners=False)[0]
    return x


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (Q, 4) of boolean masks (Q, H, W): [x_min, y_min, x_max + 1, y_max + 1]
    in pixel units, all zeros for an empty mask (vectorised, as Detectron2's BitMasks does)."""
    q, h, w = masks.shape
    cols = masks.any(1)  # (Q, W)
    rows = masks.any(2)  # (Q, H)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return boxes * cols.any(1, keepdim=True).float()


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class scores (K, H, W) = sum_q p(class | q) * sigmoid(mask_q)."""
    probs = class_logits.float().softmax(-1)[:, :-1]
    masks = mask_logits.float().sigmoid()
    q, h, w = masks.shape
    return (probs.T @ masks.view(q, h * w)).view(-1, h, w)


def panoptic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                       is_thing: torch.Tensor, object_mask_threshold: float = 0.8,
                       overlap_threshold: float = 0.8) -> Tuple[torch.Tensor, List[Dict]]:
    """Non-overlapping segments (Mask2Former's rule): keep queries whose class score exceeds
    ``object_mask_threshold``; give each pixel to the kept query with the highest score * mask
    probability (its "owner"); drop a query when |owner == q| / |p_q >= 0.5| is below
    ``overlap_threshold``; its segment is owner == q and p_q >= 0.5; stuff of one class is
    fused into one segment. Returns (IntTensor HxW with 0 = void, segments_info)."""
    k = class_logits.shape[-1] - 1
    scores, labels = class_logits.float().softmax(-1).max(-1)
    keep = (labels != k) & (scores > object_mask_threshold)
    h, w = mask_logits.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_logits.device)
    segments_info: List[Dict] = []
    if not bool(keep.any()):
        return panoptic_seg, segments_info
    scores, labels = scores[keep], labels[keep]
    probs = mask_logits[keep].float().sigmoid()
    owner = (scores[:, None, None] * probs).argmax(0)
    is_thing = is_thing.to(labels.device)
    stuff_ids: Dict[int, int] = {}
    cur_id = 0
    for q in range(len(labels)):
        cls = int(labels[q])
        thing = bool(is_thing[cls])
        full = probs[q] >= 0.5
        won = owner == q
        mask = won & full
        # Mask2Former's rule: the ratio is |owner == q| / |p_q >= 0.5| (pixels the query wins
        # over its own confident pixels); the segment is the won pixels that are confident
        won_area, full_area = int(won.sum()), int(full.sum())
        if won_area == 0 or full_area == 0 or not bool(mask.any()):
            continue
        if won_area / full_area < overlap_threshold:
            continue
        if not thing and cls in stuff_ids:
            panoptic_seg[mask] = stuff_ids[cls]
            continue
        cur_id += 1
        panoptic_seg[mask] = cur_id
        if not thing:
            stuff_ids[cls] = cur_id
        segments_info.append({"id": cur_id, "category_id": cls, "isthing": thing,
                              "score": float(scores[q])})
    return panoptic_seg, segments_info


def instance_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                       top_k: int = 100, is_thing: torch.Tensor = None) -> Instances:
    """Top-k (query, class) pairs over the thing classes (all classes when ``is_thing`` is
    None or has no thing); score = class probability * mean mask probability inside the binary
    mask; boxes tight around the masks. Overlaps are allowed. At most queries x classes
    detections, so a vocabulary with stuff classes never yields stuff labels."""
    q = class_logits.shape[0]
    h, w = mask_logits.shape[-2:]
    probs = class_logits.float().softmax(-1)[:, :-1]
    class_ids = torch.arange(probs.shape[1], device=probs.device)
    if is_thing is not None and bool(is_thing.any()):
        class_ids = class_ids[is_thing.to(probs.device).bool()]
        probs = probs[:, class_ids]
    k = len(class_ids)
    top_k = min(top_k, q * k)
    scores, flat_idx = probs.flatten().topk(top_k)
    query_idx = torch.div(flat_idx, k, rounding_mode="floor")
    labels = class_ids[flat_idx % k]
    mask_logits = mask_logits[query_idx].float()
    mask_prob = mask_logits.sigmoid()
    # Mask2Former's rule: logit > 0 (in fp32, sigmoid(x) rounds to exactly 0.5 for
    # 0 < x < ~3e-8, so "probability > 0.5" would drop those pixels)
    masks = mask_logits > 0
    mask_scores = (mask_prob * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    result = Instances((h, w))
    result.pred_masks = masks
    result.pred_boxes = Boxes(masks_to_boxes(masks))
    result.scores = scores * mask_scores
    result.pred_classes = labels
    return result
