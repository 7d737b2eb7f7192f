"""MERGE (eq. 1, 2) on hand-made tensors."""
import pytest
import torch

from dataseg.modeling.merge import classes_to_merge, merge_for_task, merge_predictions

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


def test_merge_nothing_to_merge_passes_through():
    """Instance / box data: no merged entry; predictions unchanged, all valid, zero counts."""
    logits, masks = torch.randn(2, 3, K + 1), torch.randn(2, 3, 4, 5)
    out = merge_predictions(logits, masks, torch.zeros(0, dtype=torch.long))
    assert out["pred_logits"] is logits and out["pred_masks"] is masks
    assert out["valid"].dtype == torch.bool and out["valid"].shape == (2, 3)
    assert bool(out["valid"].all())
    assert out["num_merged"] == 0 and out["counts"].shape == (2, 0)
    assert out["merged_classes"].tolist() == []


def test_merge_rejects_classes_out_of_range():
    logits, masks = torch.randn(1, 2, K + 1), torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"merge_classes must lie in \[0, 3\), got \[0, 3\]"):
        merge_predictions(logits, masks, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        merge_predictions(logits, masks, torch.tensor([-1]))


def test_merge_batch_of_two_counts_and_outputs():
    """Two images with different argmaxes: each image merges its own proposals."""
    logits = torch.cat([_logits([0, 0, 2]), _logits([1, 3, 1])])
    masks = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 1, 2)
    out = merge_predictions(logits, masks, torch.tensor([0, 1, 2]))
    assert out["counts"].tolist() == [[2.0, 0.0, 1.0], [0.0, 2.0, 0.0]]
    assert out["merged_classes"].tolist() == [0, 1, 2]
    assert out["valid"].dtype == torch.bool
    assert out["valid"].tolist() == [[True] * 3 + [False, False, False],
                                     [True] * 3 + [False, True, False]]
    m = out["pred_masks"]
    assert m.shape == (2, 6, 1, 2)
    torch.testing.assert_close(m[0, 0], masks[0, :2].amax(0))
    torch.testing.assert_close(m[0, 2], masks[0, 2])
    torch.testing.assert_close(m[1, 1], masks[1, [0, 2]].amax(0))
    assert (m[0, 1] == -100).all() and (m[1, 0] == -100).all() and (m[1, 2] == -100).all()
    torch.testing.assert_close(m[:, 3:], masks)
    torch.testing.assert_close(out["pred_logits"][1, 1], (logits[1, 0] + logits[1, 2]) /
                               (2 + 1e-6))
    torch.testing.assert_close(out["pred_logits"][:, 3:], logits)


def test_merge_for_task_passes_eps_and_empty_logit():
    is_thing = torch.tensor([True, False, False])
    logits, masks = _logits([0, 1, 1]), torch.randn(1, 3, 2, 2)
    out = merge_for_task(logits, masks, "panoptic", is_thing, eps=0.5, empty_logit=-7.0)
    assert out["num_merged"] == 2 and out["merged_classes"].tolist() == [1, 2]
    torch.testing.assert_close(out["pred_logits"][0, 0], (logits[0, 1] + logits[0, 2]) / 2.5)
    assert (out["pred_masks"][0, 1] == -7.0).all()
    assert merge_for_task(logits, masks, "box", is_thing)["num_merged"] == 0
