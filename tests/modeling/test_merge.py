"""MERGE (eq. 1, 2) on hand-made tensors."""
import pytest
import torch

from dataseg.modeling.merge import classes_to_merge, merge_predictions

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
