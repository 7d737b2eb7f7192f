"""Per-task inference (``dataseg/modeling/postprocessing.py``) on hand-made tensors whose
expected outputs are written out in the tests: Mask2Former's panoptic rule (object-mask and
overlap thresholds from both sides, stuff fusion), instance top-k over thing classes, semantic
scores (background excluded, sigmoid masks)."""
import math

import pytest
import torch

from dataseg.modeling.postprocessing import (
    instance_inference,
    masks_to_boxes,
    panoptic_inference,
    semantic_inference,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _class_logits(rows):
    """Class logits whose softmax is exactly the given probability rows (background last)."""
    return torch.log(torch.tensor(rows, dtype=torch.float64)).float()


# ------------------------------------------------------------------------------- panoptic
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


def _two_query_scene():
    """The issue's example on an 8x8 image (64 pixels), two thing queries of equal score.

    rows 0: pixels 0-7   p0 = 0.9, p1 = 0.99  -> owner 1 (query 0 confident but loses)
    row 1:  pixels 8-9   p0 = 0.9, p1 = 0.01  -> owner 0, confident
            pixels 10-15 p0 = 0.3, p1 = 0.1   -> owner 0, not confident
    rows 2-4: 24 pixels  p0 = 0.3, p1 = 0.1   -> owner 0, not confident
    rows 5-7: 24 pixels  p0 = 0.01, p1 = 0.99 -> owner 1
    Query 0: wins 2 + 30 = 32 pixels, confident on 8 + 2 = 10, 2 of them won.
    Query 1: wins 8 + 24 = 32 pixels, confident on the same 32.
    """
    p0 = torch.full((64,), 0.3)
    p1 = torch.full((64,), 0.1)
    p0[:10], p1[:8], p1[8:10] = 0.9, 0.99, 0.01
    p0[40:], p1[40:] = 0.01, 0.99
    masks = torch.logit(torch.stack([p0, p1]).double()).float().view(2, 8, 8)
    logits = _class_logits([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    return logits, masks


def test_panoptic_overlap_ratio_is_won_over_confident_area():
    """Mask2Former keeps query 0: |owner == 0| / |p_0 >= 0.5| = 32 / 10 >= 0.8; its segment is
    the 2 pixels it wins and is confident on (the old rule 2 / 10 dropped it)."""
    logits, masks = _two_query_scene()
    seg, info = panoptic_inference(logits, masks, torch.tensor([True, True]), 0.8, 0.8)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [
        (1, 0, True), (2, 1, True)]
    flat = seg.flatten()
    assert flat[8:10].tolist() == [1, 1] and int((flat == 1).sum()) == 2
    expected_q1 = torch.zeros(64, dtype=torch.bool)
    expected_q1[:8] = True
    expected_q1[40:] = True
    assert torch.equal(flat == 2, expected_q1)
    assert int((flat == 0).sum()) == 30  # won by query 0 but not confident: void
    assert info[0]["score"] == pytest.approx(0.9, abs=1e-6)


def _partly_hidden(front_pixels: int):
    """Query 0 (class 0) is confident on 10 pixels of a 1x20 image; query 1 (class 1, higher
    mask probability) hides ``front_pixels`` of them. Query 0's ratio = (10 - front) / 10."""
    m0 = torch.full((1, 20), _logit(0.01))
    m0[0, :10] = _logit(0.9)
    m1 = torch.full((1, 20), _logit(0.01))
    m1[0, :front_pixels] = _logit(0.99)
    m1[0, 10:] = _logit(0.99)
    logits = _class_logits([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    return logits, torch.stack([m0, m1])


@pytest.mark.parametrize("threshold,kept", [(0.79, True), (0.8, True), (0.81, False)])
def test_panoptic_overlap_threshold_both_sides(threshold, kept):
    """Ratio 8/10 = 0.8 with a partly (not fully) hidden segment: kept at thresholds <= 0.8
    (Mask2Former drops when ratio < threshold), dropped just above."""
    logits, masks = _partly_hidden(2)
    seg, info = panoptic_inference(logits, masks, torch.tensor([True, True]), 0.5, threshold)
    cats = [s["category_id"] for s in info]
    if kept:
        assert cats == [0, 1]
        assert seg[0, :2].tolist() == [2, 2] and seg[0, 2:10].tolist() == [1] * 8
    else:
        assert cats == [1]
        assert seg[0, :2].tolist() == [1, 1] and seg[0, 2:10].tolist() == [0] * 8
    assert seg[0, 10:].tolist() == [info[-1]["id"]] * 10


@pytest.mark.parametrize("threshold,kept", [(0.84, True), (0.86, False)])
def test_panoptic_object_mask_threshold_both_sides(threshold, kept):
    """A query with class probability 0.85 is kept only when 0.85 > OBJECT_MASK_THRESHOLD; a
    query whose argmax is background (0.9) is never kept."""
    logits = _class_logits([[0.85, 0.1, 0.05], [0.05, 0.05, 0.9]])
    masks = torch.full((2, 2, 3), 5.0)
    seg, info = panoptic_inference(logits, masks, torch.tensor([True, False]), threshold, 0.8)
    if kept:
        assert [(s["category_id"], s["isthing"]) for s in info] == [(0, True)]
        assert info[0]["score"] == pytest.approx(0.85, abs=1e-6)
        assert (seg == 1).all()
    else:
        assert info == [] and (seg == 0).all()


def test_panoptic_stuff_of_one_class_fused_things_not():
    """Two stuff queries of class 1 give one segment over both regions (the first query's
    score); two thing queries of class 0 stay two segments."""
    logits = _class_logits([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05],
                            [0.04, 0.92, 0.04]])
    masks = torch.full((4, 1, 8), -9.0)
    for q in range(4):
        masks[q, 0, 2 * q:2 * q + 2] = 9.0
    seg, info = panoptic_inference(logits, masks, torch.tensor([True, False]), 0.8, 0.8)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [
        (1, 0, True), (2, 0, True), (3, 1, False)]
    assert seg[0].tolist() == [1, 1, 2, 2, 3, 3, 3, 3]
    assert info[2]["score"] == pytest.approx(0.9, abs=1e-6)


# ------------------------------------------------------------------------------- instance
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


def test_instance_topk_over_thing_classes_only():
    """Vocabulary [stuff, thing, thing, stuff]; 2 queries; top_k 10 > 2 queries x 2 things:
    exactly 4 detections, thing labels only, in score order; score = class probability x mean
    mask probability inside the binary mask (hand-computed)."""
    logits = _class_logits([[0.5, 0.1, 0.3, 0.05, 0.05],
                            [0.05, 0.4, 0.2, 0.3, 0.05]])
    masks = torch.full((2, 2, 2), _logit(0.2))
    masks[0, 0] = torch.tensor([_logit(0.9), _logit(0.7)])  # mean inside (0.9 + 0.7) / 2
    masks[1, :, 0] = _logit(0.6)  # mean inside 0.6
    is_thing = torch.tensor([False, True, True, False])
    inst = instance_inference(logits, masks, top_k=10, is_thing=is_thing)
    assert len(inst) == 4
    # (query, class, class prob): (1, 1, .4), (0, 2, .3), (1, 2, .2), (0, 1, .1)
    assert inst.pred_classes.tolist() == [1, 2, 2, 1]
    expected = [0.4 * 0.6, 0.3 * 0.8, 0.2 * 0.6, 0.1 * 0.8]
    torch.testing.assert_close(inst.scores, torch.tensor(expected), atol=1e-5, rtol=0)
    assert inst.pred_masks[0].tolist() == [[True, False], [True, False]]
    assert inst.pred_masks[1].tolist() == [[True, True], [False, False]]
    # top_k below queries x things: the best ones only
    inst2 = instance_inference(logits, masks, top_k=2, is_thing=is_thing)
    assert inst2.pred_classes.tolist() == [1, 2] and len(inst2) == 2


def test_instance_all_stuff_vocabulary_uses_every_class():
    logits = _class_logits([[0.5, 0.3, 0.2]])
    inst = instance_inference(logits, torch.full((1, 2, 2), 3.0), top_k=5,
                              is_thing=torch.tensor([False, False]))
    assert inst.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(inst.scores, torch.tensor([0.5, 0.3]) * torch.sigmoid(
        torch.tensor(3.0)), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------- semantic
def test_semantic_scores_exclude_background_and_use_sigmoid():
    """score[c, pixel] = sum_q softmax(cls_q)[c] * sigmoid(mask_q[pixel]), c < K: the
    background probability never enters, mask logits go through a sigmoid."""
    logits = _class_logits([[0.6, 0.1, 0.3], [0.2, 0.5, 0.3]])
    masks = torch.tensor([[[_logit(0.8), _logit(0.25)]], [[0.0, _logit(0.9)]]])
    out = semantic_inference(logits, masks)
    assert out.shape == (2, 1, 2)
    expected = torch.tensor([[[0.6 * 0.8 + 0.2 * 0.5, 0.6 * 0.25 + 0.2 * 0.9]],
                             [[0.1 * 0.8 + 0.5 * 0.5, 0.1 * 0.25 + 0.5 * 0.9]]])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
