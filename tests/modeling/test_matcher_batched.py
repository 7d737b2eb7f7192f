"""Issue 22: ``HungarianMatcher.match_sets`` matches every decoder layer's predictions in a few
batched calls; each (set, image) must get exactly the assignment of the per-image definition
(``cost_matrix`` on the valid queries, solved by ``linear_sum_assignment``) with the same
random points."""
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from dataseg.modeling.matcher import HungarianMatcher


def _sets(n_sets, b, q, k1, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        valid = torch.rand(b, q, generator=g) > 0.3
        valid[:, 0] = True
        sets.append({"pred_logits": torch.randn(b, q, k1, generator=g) * 2,
                     "pred_masks": torch.randn(b, q, h, w, generator=g) * 3, "valid": valid})
    return sets, g


def _targets(g, counts, k, h, w, boxes):
    out = []
    for t in counts:
        target = {"labels": torch.randint(0, k, (t,), generator=g)}
        if boxes:
            xy = torch.rand(t, 2, generator=g) * 0.5
            target["boxes"] = torch.cat([xy, xy + 0.1 + torch.rand(t, 2, generator=g) * 0.4], 1)
        else:
            target["masks"] = torch.rand(t, h, w, generator=g) > 0.5
        out.append(target)
    return out


def _per_image(matcher, sets, targets):
    """The definition: per set, per image with targets, cost_matrix on the valid queries (its
    own torch.rand draw, in set-then-image order), solved on the host."""
    result = []
    for o in sets:
        per = []
        for i, t in enumerate(targets):
            q_idx = torch.arange(o["pred_logits"].shape[1])[o["valid"][i]]
            if len(t["labels"]) == 0:
                per.append(None)
                continue
            cost = matcher.cost_matrix(o["pred_logits"][i, q_idx], o["pred_masks"][i, q_idx], t)
            rows, cols = linear_sum_assignment(torch.nan_to_num(cost, nan=1e8).numpy())
            per.append((q_idx[torch.as_tensor(rows)], torch.as_tensor(cols), cost))
        result.append(per)
    return result


@pytest.mark.parametrize("boxes", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_match_sets_equals_the_per_image_definition(boxes, seed):
    k, h, w = 5, 12, 10
    sets, g = _sets(4, 3, 9, k + 1, h, w, seed)
    targets = _targets(g, [4, 0, 7], k, h, w, boxes)
    matcher = HungarianMatcher(num_points=50)
    # small chunks: the sets are split over several batched calls, still one host copy
    matcher.CHUNK_ELEMENTS = 3 * 9 * 50 * 2
    torch.manual_seed(seed)
    got = matcher.match_sets(sets, targets)
    torch.manual_seed(seed)
    want = _per_image(matcher, sets, targets)
    assert len(got) == len(sets)
    n_matched = 0
    for s in range(len(sets)):
        for i in range(len(targets)):
            rows, cols = got[s][i]
            assert rows.dtype == cols.dtype == torch.int64
            if want[s][i] is None:
                assert len(rows) == len(cols) == 0
                continue
            w_rows, w_cols, cost = want[s][i]
            assert torch.equal(rows, w_rows) and torch.equal(cols, w_cols), (s, i)
            assert bool(sets[s]["valid"][i, rows].all())
            n_matched += len(rows)
    # every image with targets gets min(valid queries, targets) pairs
    assert n_matched == sum(min(int(o["valid"][i].sum()), t) for o in sets
                            for i, t in ((0, 4), (2, 7)))
    # forward is match_sets of one set
    torch.manual_seed(seed)
    one = matcher(sets[0], targets)
    for (rows, cols), (g_rows, g_cols) in zip(one, got[0]):
        assert torch.equal(rows, g_rows) and torch.equal(cols, g_cols)


def test_match_sets_without_any_target():
    sets, g = _sets(2, 2, 5, 4, 6, 6, 0)
    out = HungarianMatcher(num_points=16).match_sets(sets, _targets(g, [0, 0], 3, 6, 6, False))
    assert [[len(r) for r, _ in per] for per in out] == [[0, 0], [0, 0]]
