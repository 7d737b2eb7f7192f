"""MERGE, equations (1) and (2) of the DaTaSeg paper.

For every class c in the set to merge, the merged mask logit is the element-wise max of the mask
logits of the proposals whose argmax class is c, and -100 (``empty_logit``) where no proposal
predicts c; the merged class logits are the mean of those proposals' class logits,
sum / (count + eps).

Background ("no object", the last logit): argmax is taken over all K+1 logits, so a proposal
whose argmax is background predicts no class and joins no merged entry. The merged class logits
average the full K+1 vectors (the background logit included), so a merged entry keeps a
background score. A class no proposal predicts gets the all-zero vector (eq. 2 with count 0).

Output layout (fixed shapes, batched): ``M`` merged entries (one per class to merge, in the
order of ``merge_classes``) followed by the ``N`` original proposals; ``valid`` (B, M+N) is
False for proposals absorbed into a merged entry. Unmerged proposals (thing classes and
background-argmax proposals) stay as they are. Gradients flow through the max and the mean.
"""
from typing import Dict

import torch

from ..contract import TASKS

# one entry per task of the contract (tests/modeling pins that the keys are TASKS)
MERGE_CLASSES_PER_TASK = {"semantic": "all", "panoptic": "stuff", "instance": "none",
                          "box": "none"}


def classes_to_merge(task: str, is_thing: torch.Tensor) -> torch.Tensor:
    """Class ids MERGE combines for a task: semantic all, panoptic stuff, instance/box none."""
    if task not in MERGE_CLASSES_PER_TASK:
        raise ValueError(f"MERGE: unknown task {task!r}; expected one of "
                         f"{TASKS}")
    kind = MERGE_CLASSES_PER_TASK[task]
    ids = torch.arange(is_thing.numel(), device=is_thing.device)
    if kind == "all":
        return ids
    if kind == "stuff":
        return ids[~is_thing.bool()]
    return ids[:0]


def merge_predictions(pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                      merge_classes: torch.Tensor, eps: float = 1e-6,
                      empty_logit: float = -100.0, check: bool = True) -> Dict[str, torch.Tensor]:
    """Applies eq. (1) and (2).

    Args:
        pred_logits: (B, N, K+1) class logits, background last; any number of leading dims
            (e.g. (S, B, N, K+1): the predictions of every decoder layer, merged in one call).
        pred_masks: (B, N, H, W) mask logits, the same leading dims.
        merge_classes: (M,) int64 class ids in [0, K) to merge.
        check: verify that ``merge_classes`` lie in [0, K) (reads them on the host: a device
            sync on a GPU; ``merge_for_task`` builds valid ids and skips it).
    Returns dict with
        "pred_logits" (B, M+N, K+1), "pred_masks" (B, M+N, H, W),
        "valid" (B, M+N) bool, "num_merged" (int M), "merged_classes" (M,),
        "counts" (B, M): how many proposals each merged entry combines (0 = empty entry).
    """
    *lead, n, k1 = pred_logits.shape
    h, w = pred_masks.shape[-2:]
    m = int(merge_classes.numel())
    if m == 0:
        return {"pred_logits": pred_logits, "pred_masks": pred_masks,
                "valid": torch.ones(*lead, n, dtype=torch.bool, device=pred_logits.device),
                "num_merged": 0, "merged_classes": merge_classes,
                "counts": pred_logits.new_zeros(*lead, 0)}
    if check and (int(merge_classes.max()) >= k1 - 1 or int(merge_classes.min()) < 0):
        raise ValueError(f"MERGE: merge_classes must lie in [0, {k1 - 1}), got "
                         f"{merge_classes.tolist()}")
    b = 1
    for d in lead:
        b *= d
    logits = pred_logits.reshape(b, n, k1)
    argmax = logits.argmax(dim=-1)  # (B, N)
    # slot of each proposal: index of its class in merge_classes, or m (a dump row) if none
    lookup = torch.full((k1,), m, dtype=torch.long, device=pred_logits.device)
    lookup[merge_classes.to(pred_logits.device)] = torch.arange(m, device=pred_logits.device)
    slot = lookup[argmax]  # (B, N)

    flat = pred_masks.reshape(b, n, h * w)
    init = flat.new_full((b, m + 1, h * w), empty_logit)
    merged_masks = init.scatter_reduce(1, slot[..., None].expand(-1, -1, h * w), flat,
                                       reduce="amax", include_self=False)[:, :m]
    sums = logits.new_zeros(b, m + 1, k1).scatter_add(
        1, slot[..., None].expand(-1, -1, k1), logits)[:, :m]
    counts = logits.new_zeros(b, m + 1).scatter_add(1, slot, logits.new_ones(b, n))[:, :m]
    merged_logits = sums / (counts[..., None] + eps)
    # a merged entry is always valid; a proposal is when no merged entry absorbed it
    valid = torch.cat([slot.new_full((b, m), m), slot], 1) >= m

    return {
        "pred_logits": torch.cat([merged_logits, logits], dim=1).view(*lead, m + n, k1),
        "pred_masks": torch.cat([merged_masks.view(b, m, h, w), pred_masks.reshape(
            b, n, h, w)], dim=1).view(*lead, m + n, h, w),
        "valid": valid.view(*lead, m + n),
        "num_merged": m,
        "merged_classes": merge_classes,
        "counts": counts.view(*lead, m),
    }


def merge_for_task(pred_logits, pred_masks, task: str, is_thing: torch.Tensor,
                   eps: float = 1e-6, empty_logit: float = -100.0):
    """MERGE with the class set the task calls for (see ``classes_to_merge``)."""
    return merge_predictions(pred_logits, pred_masks,
                             classes_to_merge(task, is_thing.to(pred_logits.device)),
                             eps=eps, empty_logit=empty_logit, check=False)
