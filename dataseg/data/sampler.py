"""Multi-dataset batch sampler: one dataset per iteration, the same on every process.

The paper co-trains by sampling ONE dataset per iteration (so the whole batch across all
devices has one task and one loss set). Every process runs an identical generator for the
dataset choice, so they agree without communication; each process then takes its own shard of
that dataset's batch from a per-dataset stream that is shuffled with the shared seed (again
identical on every process) and split by rank, so processes draw disjoint images and each
pass over a dataset is a fresh permutation.
"""
from typing import Iterator, List, Sequence

import numpy as np

__all__ = ["MultiDatasetBatchSampler"]


class MultiDatasetBatchSampler:
    """Infinite batch sampler yielding GLOBAL indices into the concatenated datasets.

    Args:
        dataset_sizes: number of records of each dataset (in concatenation order).
        ratios: sampling weight of each dataset (normalised; need not sum to 1).
        batch_sizes: per-iteration batch of each dataset summed over ALL processes; each must
            be divisible by ``world_size``.
        seed: shared by all processes (same seed -> same sequence).
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, dataset_sizes: Sequence[int], ratios: Sequence[float],
                 batch_sizes: Sequence[int], *, seed: int, rank: int = 0, world_size: int = 1):
        n = len(dataset_sizes)
        if n == 0:
            raise ValueError("MultiDatasetBatchSampler: no datasets (dataset_sizes is empty)")
        if len(ratios) != n or len(batch_sizes) != n:
            raise ValueError(f"MultiDatasetBatchSampler: {n} datasets but {len(ratios)} ratios "
                             f"and {len(batch_sizes)} batch sizes")
        if any(int(s) <= 0 for s in dataset_sizes):
            raise ValueError(f"MultiDatasetBatchSampler: every dataset must be non-empty, sizes "
                             f"{list(dataset_sizes)}")
        r = np.asarray(ratios, dtype=np.float64)
        if not np.isfinite(r).all() or (r < 0).any() or r.sum() <= 0:
            raise ValueError(f"MultiDatasetBatchSampler: ratios must be finite, >= 0 and not all "
                             f"zero, got {list(ratios)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"MultiDatasetBatchSampler: rank {rank} not in [0, {world_size})")
        for d, b in enumerate(batch_sizes):
            if int(b) <= 0 or int(b) % world_size:
                raise ValueError(f"MultiDatasetBatchSampler: batch size {b} of dataset {d} must be "
                                 f"a positive multiple of the world size {world_size}")
        self.dataset_sizes = [int(s) for s in dataset_sizes]
        self.ratios = r / r.sum()
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.offsets = np.concatenate([[0], np.cumsum(self.dataset_sizes)[:-1]]).astype(np.int64)

    def _stream(self, d: int) -> Iterator[int]:
        """This rank's share of dataset d's stream: global positions g with g % world == rank.

        The stream concatenates permutations of the dataset (a fresh one per pass) generated
        identically on every process. Each pass is cut to a multiple of the batch size (the
        <= batch-1 left-over images of a pass wait for the next, reshuffled pass), so one
        iteration never straddles two passes and the ranks' images are disjoint.
        """
        rng = np.random.default_rng([self.seed, 1 + d])
        n, offset, batch = self.dataset_sizes[d], int(self.offsets[d]), self.batch_sizes[d]
        usable = (n // batch) * batch if n >= batch else n
        perm, pass_start, g = rng.permutation(n), 0, self.rank
        while True:
            while g - pass_start >= usable:
                perm, pass_start = rng.permutation(n), pass_start + usable
            yield int(perm[g - pass_start]) + offset
            g += self.world_size

    def __iter__(self) -> Iterator[List[int]]:
        choice_rng = np.random.default_rng([self.seed, 0])
        streams = [self._stream(d) for d in range(len(self.dataset_sizes))]
        while True:
            d = int(choice_rng.choice(len(self.ratios), p=self.ratios))
            share = self.batch_sizes[d] // self.world_size
            yield [next(streams[d]) for _ in range(share)]
