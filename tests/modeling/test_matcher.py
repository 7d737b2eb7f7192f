"""Hungarian matcher (eq. 5): optimal assignment and the cost terms."""
import itertools

import pytest
import torch

from dataseg.modeling.matcher import HungarianMatcher


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
