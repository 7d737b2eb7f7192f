"""MultiDatasetBatchSampler: ratios, rank agreement and disjointness, determinism, errors."""
import itertools

import numpy as np
import pytest

from dataseg.data.sampler import MultiDatasetBatchSampler

SIZES = [50, 200, 31]


def _take(s, n):
    return list(itertools.islice(iter(s), n))


def _dataset_of(idx):
    return int(np.searchsorted(np.cumsum(SIZES), idx, side="right"))


def test_ratios_within_two_points():
    ratios = [1.0, 2.0, 1.0]
    s = MultiDatasetBatchSampler(SIZES, ratios, [4, 8, 2], seed=3)
    batches = _take(s, 6000)
    counts = np.bincount([_dataset_of(b[0]) for b in batches], minlength=3) / len(batches)
    assert np.abs(counts - np.array(ratios) / 4).max() < 0.02
    for b in batches[:200]:
        d = _dataset_of(b[0])
        assert all(_dataset_of(i) == d for i in b) and len(b) == [4, 8, 2][d]


def test_two_ranks_same_dataset_disjoint_images():
    a = _take(MultiDatasetBatchSampler(SIZES, [1, 1, 1], [4, 8, 2], seed=5, rank=0,
                                       world_size=2), 1500)
    b = _take(MultiDatasetBatchSampler(SIZES, [1, 1, 1], [4, 8, 2], seed=5, rank=1,
                                       world_size=2), 1500)
    seen = {d: [] for d in range(3)}
    for x, y in zip(a, b):
        d = _dataset_of(x[0])
        assert all(_dataset_of(i) == d for i in x + y)
        assert len(x) == len(y) == [2, 4, 1][d]
        assert not set(x) & set(y)
        seen[d] += x + y
    for d, idx in seen.items():  # passes: distinct images, reshuffled, all seen over time
        n, b, start = SIZES[d], [4, 8, 2][d], sum(SIZES[:d])
        usable = (n // b) * b
        passes = [idx[p:p + usable] for p in range(0, len(idx) - usable + 1, usable)]
        assert len(passes) >= 2
        assert all(len(set(p)) == usable for p in passes)
        assert passes[0] != passes[1]
        assert set(idx) == set(range(start, start + n))


def test_deterministic_and_seed_dependent():
    mk = lambda seed: _take(MultiDatasetBatchSampler(SIZES, [1, 2, 3], [2, 2, 2], seed=seed), 50)  # noqa
    assert mk(11) == mk(11)
    assert mk(11) != mk(12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(ratios=[1, 1]), "3 datasets but 2 ratios"),
    (dict(ratios=[0, 0, 0]), "not all zero"),
    (dict(ratios=[1, -1, 1]), ">= 0"),
    (dict(ratios=[1, float("nan"), 1]), "finite"),
    (dict(batch_sizes=[4, 3, 2], world_size=2), "batch size 3 of dataset 1.*world size 2"),
    (dict(batch_sizes=[4, 0, 2]), "batch size 0"),
    (dict(dataset_sizes=[5, 0, 3]), "non-empty"),
    (dict(rank=2, world_size=2), "rank 2"),
    (dict(rank=-1), r"rank -1 not in \[0, 1\)"),
    (dict(dataset_sizes=[]), "no datasets"),
])
def test_bad_arguments(kwargs, match):
    args = dict(dataset_sizes=SIZES, ratios=[1, 1, 1], batch_sizes=[2, 2, 2], seed=0)
    args.update(kwargs)
    if args["dataset_sizes"] == []:
        args.update(ratios=[], batch_sizes=[])
    with pytest.raises(ValueError, match=match):
        MultiDatasetBatchSampler(args.pop("dataset_sizes"), args.pop("ratios"),
                                 args.pop("batch_sizes"), **args)


def test_dataset_smaller_than_its_batch_and_offsets():
    """A 3-image dataset with batch 5: every run of 3 consecutive draws is a permutation of
    its images (passes are not cut), indices are offset past the first dataset (size 4)."""
    s = MultiDatasetBatchSampler([4, 3], [0, 1], [2, 5], seed=1)
    flat = [i for b in _take(s, 6) for i in b]
    assert len(flat) == 30 and set(flat) == {4, 5, 6}
    assert all(sorted(flat[p:p + 3]) == [4, 5, 6] for p in range(0, 30, 3))
    # ratio 0 never draws the first dataset; ratios are normalised
    assert s.ratios.tolist() == [0.0, 1.0]
    assert MultiDatasetBatchSampler([4, 3], [1, 3], [2, 5], seed=1).ratios.tolist() == [
        0.25, 0.75]
