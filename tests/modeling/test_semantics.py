"""Hand-made tensors pinning down MERGE, the projection loss, the matcher, and inference."""
import itertools

import pytest
import torch

from dataseg.modeling.criterion import SetCriterion
from dataseg.modeling.losses import projection_loss
from dataseg.modeling.matcher import HungarianMatcher
from dataseg.modeling.merge import classes_to_merge, merge_predictions
from dataseg.modeling.postprocessing import (
    instance_inference,
    masks_to_boxes,
    panoptic_inference,
)

# ---------------------------------------------------------------------------- MERGE
K = 3  # classes 0..2, background = index 3


def _logits(argmaxes):
    """Rows whose argmax is the given class, with distinct values so averages are checkable."""
    rows = []
    for j, c in enumerate(argmaxes):
        row = torch.arange(K + 1, dtype=torch.float32) * 0.1 + j
        row[c] = 10.0 + j
        rows.append(row)
    return torch.stack(rows)[None]


def test_merge_max_only_over_predicting_proposals():
    logits = _logits([0, 1, 0, 3])  # proposals 0 and 2 predict class 0; 3 predicts background
    masks = torch.tensor([[[1.0, -5.0]], [[100.0, 100.0]], [[-2.0, 3.0]], [[50.0, 50.0]]])[None]
    out = merge_predictions(logits, masks, torch.tensor([0, 1, 2]))
    m = out["pred_masks"][0]
    assert out["num_merged"] == 3 and m.shape == (3 + 4, 1, 2)
    torch.testing.assert_close(m[0], torch.tensor([[1.0, 3.0]]))  # max of proposals 0, 2 only
    torch.testing.assert_close(m[1], torch.tensor([[100.0, 100.0]]))
    torch.testing.assert_close(m[2], torch.full((1, 2), -100.0))  # nobody predicts class 2
    z = out["pred_logits"][0]
    torch.testing.assert_close(z[0], (logits[0, 0] + logits[0, 2]) / (2 + 1e-6))
    torch.testing.assert_close(z[1], logits[0, 1] / (1 + 1e-6))
    torch.testing.assert_close(z[2], torch.zeros(K + 1))
    # absorbed proposals 0,1,2 are invalid; the background proposal stays
    assert out["valid"][0].tolist() == [True] * 3 + [False, False, False, True]


def test_merge_panoptic_merges_stuff_only_and_passes_gradients():
    is_thing = torch.tensor([True, False, False])
    merge_cls = classes_to_merge("panoptic", is_thing)
    assert merge_cls.tolist() == [1, 2]
    logits = _logits([0, 1, 1, 2]).requires_grad_()
    masks = torch.randn(1, 4, 3, 3, requires_grad=True)
    out = merge_predictions(logits, masks, merge_cls)
    assert out["valid"][0].tolist() == [True, True, True, False, False, False]
    torch.testing.assert_close(out["pred_masks"][0, 0], masks[0, 1:3].amax(0))
    torch.testing.assert_close(out["pred_masks"][0, 1], masks[0, 3])
    out["pred_masks"][0, 0].sum().backward()
    assert masks.grad[0, 0].abs().sum() == 0 and masks.grad[0, 3].abs().sum() == 0
    assert masks.grad[0, 1:3].abs().sum() > 0


def test_merge_tasks():
    thing = torch.tensor([True, False, True])
    assert classes_to_merge("semantic", thing).tolist() == [0, 1, 2]
    assert classes_to_merge("instance", thing).tolist() == []
    assert classes_to_merge("box", thing).tolist() == []
    with pytest.raises(ValueError, match="unknown task"):
        classes_to_merge("depth", thing)


# -------------------------------------------------------------- projection loss
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


# ---------------------------------------------------------------------- matcher
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("use_boxes", [False, True])
def test_matcher_is_optimal_against_brute_force(seed, use_boxes):
    g = torch.Generator().manual_seed(seed)
    q, t = 5, 3
    logits = torch.randn(1, q, 4, generator=g)
    masks = torch.randn(1, q, 8, 8, generator=g) * 3
    target = {"labels": torch.randint(0, 3, (t,), generator=g)}
    if use_boxes:
        xy = torch.rand(t, 2, generator=g) * 0.5
        target["boxes"] = torch.cat([xy, xy + 0.2 + torch.rand(t, 2, generator=g) * 0.3], 1)
    else:
        target["masks"] = torch.rand(t, 8, 8, generator=g) > 0.5
    matcher = HungarianMatcher(num_points=64)
    torch.manual_seed(seed)
    (rows, cols), = matcher({"pred_logits": logits, "pred_masks": masks}, [target])
    torch.manual_seed(seed)  # same sampled points for the cost matrix we check against
    cost = matcher.cost_matrix(logits[0], masks[0], target)
    got = float(cost[rows, cols].sum())
    best = min(float(sum(cost[p[j], j] for j in range(t))) for p in itertools.permutations(
        range(q), t))
    assert len(rows) == t and sorted(cols.tolist()) == list(range(t))
    assert got == pytest.approx(best, abs=1e-5)


def test_matcher_skips_invalid_predictions():
    logits = torch.randn(1, 4, 3)
    masks = torch.randn(1, 4, 6, 6)
    valid = torch.tensor([[False, True, False, True]])
    target = {"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 6, 6) > 0.5}
    (rows, _), = HungarianMatcher(num_points=16)(
        {"pred_logits": logits, "pred_masks": masks, "valid": valid}, [target])
    assert sorted(rows.tolist()) == [1, 3]


def test_criterion_no_targets_only_no_object_term():
    crit = SetCriterion(matcher=HungarianMatcher(num_points=16), num_points=16)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8)}] * 2
    losses = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    assert float(losses["loss_focal"]) == 0 and float(losses["loss_dice"]) == 0
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 3),
                                                 torch.full((8,), 2)) * 2.0
    torch.testing.assert_close(losses["loss_ce"], expected)
    sum(losses.values()).backward()
    assert torch.isfinite(masks.grad).all()


# -------------------------------------------------------------------- inference
def test_panoptic_segments_never_overlap_and_are_listed():
    g = torch.Generator().manual_seed(0)
    q, k = 12, 4
    logits = torch.randn(q, k + 1, generator=g) * 4
    logits[:, 0] += 6  # make most queries confident
    masks = torch.randn(q, 20, 24, generator=g) * 3
    is_thing = torch.tensor([True, False, True, False])
    seg, info = panoptic_inference(logits, masks, is_thing, 0.5, 0.0)
    assert seg.dtype == torch.int32 and len(info) > 0
    ids = [s["id"] for s in info]
    assert len(ids) == len(set(ids))  # one id per segment; a pixel holds one id by construction
    assert set(seg.unique().tolist()) - {0} == set(ids)
    for s in info:
        assert s["isthing"] == bool(is_thing[s["category_id"]])
    stuff = [s["category_id"] for s in info if not s["isthing"]]
    assert len(stuff) == len(set(stuff))  # stuff of one class is fused


def test_panoptic_overlap_threshold_drops_hidden_segments():
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0]])
    masks = torch.full((2, 4, 4), -9.0)
    masks[0] = 9.0  # query 0 covers everything with prob ~1
    masks[1, :2] = 8.0  # query 1 covers the top half, but scores lower per pixel
    seg, info = panoptic_inference(logits, masks, torch.tensor([True, True]), 0.5, 0.8)
    assert [s["category_id"] for s in info] == [0] and (seg == info[0]["id"]).all()


def test_instance_boxes_tight_around_masks():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 9, 11] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[3, 2, 7, 5], [11, 9, 12, 10], [0, 0, 0, 0]]
    logits = torch.randn(6, 4)
    mask_logits = torch.randn(6, 10, 12) * 4
    inst = instance_inference(logits, mask_logits, top_k=5)
    for m, b in zip(inst.pred_masks, inst.pred_boxes.tensor):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            assert b.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1,
                                  ys.max().item() + 1]
    assert len(inst) == 5 and (inst.scores[:-1] >= 0).all()
