"""Train and test data loaders.

``build_multi_dataset_train_loader(cfg)``: one mapped dataset (``MapDataset``-like) per dataset in
``cfg.DATASETS.TRAIN`` (its own mapper from the metadata task), concatenated, batched by
:class:`MultiDatasetBatchSampler` so every batch is a list of mapped dicts from ONE dataset.
"""
import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetFromList
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.samplers import InferenceSampler
from detectron2.utils import comm

from ..config import per_train_dataset
from .columnar import ColumnarBoxDataset
from .file_checks import check_dataset_files
from .loading import skipping_bad_records
from .mappers import build_test_mapper, build_train_mapper
from .register_files import RegisterDatasetFiles
from .sampler import MultiDatasetBatchSampler

logger = logging.getLogger(__name__)

__all__ = ["build_multi_dataset_train_loader", "build_test_loader", "get_train_dataset_dicts",
           "InferenceLoader"]


class _FallbackPool(Sequence):
    """Records MapDataset may fall back to when a mapper returns None (a skipped bad record).

    Detectron2 0.6 keeps them in a ``set`` and calls ``random.sample`` on it, which Python
    3.11 rejects (TypeError), and a set of 1.7M ints costs ~100 MB; this is a 1-byte-per-record
    sequence with the same ``add``/``discard`` interface. ``pool[j]`` is the first good index
    at or after j (cyclically).
    """

    def __init__(self, n: int):
        self._bad = np.zeros(n, dtype=bool)

    def add(self, i: int) -> None:
        self._bad[i] = False

    def discard(self, i: int) -> None:
        self._bad[i] = True

    def __len__(self) -> int:
        return len(self._bad)

    def __getitem__(self, j: int) -> int:
        if not -len(self) <= j < len(self):
            raise IndexError(j)  # ends iteration (random.sample may list() the pool)
        j %= len(self)
        good = np.flatnonzero(~self._bad)
        if len(good) == 0:
            raise RuntimeError("every record of a training dataset failed to load; see the "
                               "'skipped bad record' warnings")
        k = np.searchsorted(good, j)
        return int(good[k % len(good)])


class _MapWithFallback(torch.utils.data.Dataset):
    """``mapper(records[i])``; where the mapper returns None (a bad record it skipped), another
    record is mapped instead, drawn from those not yet seen to fail (:class:`_FallbackPool`),
    as Detectron2's ``MapDataset`` does for map-style datasets (same draws: a
    ``random.Random(42)`` per dataset), with that pool in place of its ``set``."""

    def __init__(self, records, mapper):
        self.records, self.mapper = records, mapper
        self.rng = random.Random(42)
        self.fallback = _FallbackPool(len(records))

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        cur, retries = int(idx), 0
        while True:
            data = self.mapper(self.records[cur])
            if data is not None:
                self.fallback.add(cur)
                return data
            retries += 1
            self.fallback.discard(cur)
            cur = self.fallback[self.rng.randrange(len(self.fallback))]
            if retries >= 3:
                logger.warning("failed to map record %d after %d attempts", idx, retries)


def _has_targets(record: dict) -> bool:
    if "boxes" in record:
        return len(record["boxes"]) > 0
    if "annotations" in record:
        return any(not a.get("iscrowd", 0) for a in record["annotations"])
    return True  # semantic / panoptic records: targets are in the label files


def get_train_dataset_dicts(cfg, dataset_name: str) -> Sequence:
    """Records of one training dataset; empty ones dropped when
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS (instance/box data, as Detectron2 does).

    With DATASETS.PREFLIGHT their files are checked first (``dataseg.data.file_checks``).
    The records are used as the loader made them ("dataset_name" is the loaders' to set; the
    model inputs get it from the mapper), read with cfg.DATASETS.SKIP_BAD_RECORDS in scope."""
    with skipping_bad_records(cfg.DATASETS.SKIP_BAD_RECORDS):
        dicts = DatasetCatalog.get(dataset_name)
    if cfg.DATASETS.get("PREFLIGHT", False):  # files and label sizes, before iteration 0
        check_dataset_files(dicts, f"pre-flight check of DATASETS.TRAIN '{dataset_name}'",
                            cfg.DATASETS.get("PREFLIGHT_FILES_MAX", 0),
                            cfg.DATASETS.SKIP_BAD_RECORDS)
    if isinstance(dicts, ColumnarBoxDataset):  # lazy, memory-mapped: filter without materialising
        return dicts.nonempty() if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS else dicts
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        before = len(dicts)
        dicts = [d for d in dicts if _has_targets(d)]
        if len(dicts) < before:
            logger.info("dataset '%s': removed %d images without usable annotations, %d left",
                        dataset_name, before - len(dicts), len(dicts))
    if not dicts:
        raise ValueError(f"training dataset '{dataset_name}' has no usable records")
    return dicts


def build_multi_dataset_train_loader(cfg) -> torch.utils.data.DataLoader:
    """An infinite loader of batches (lists of mapped dicts), each from one training dataset."""
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("cfg.DATASETS.TRAIN is empty")
    datasets = []
    for name in names:
        dicts = get_train_dataset_dicts(cfg, name)
        # A lazy (columnar) dataset is used as is: DatasetFromList(serialize=True) would pickle
        # every record into each process, the copy the memory-mapped cache exists to avoid.
        if not isinstance(dicts, torch.utils.data.Dataset):
            dicts = DatasetFromList(dicts, copy=False)
        datasets.append(_MapWithFallback(dicts, build_train_mapper(cfg, name)))
    ratios = per_train_dataset(cfg, "TRAIN_RATIOS", 1.0)
    batch_sizes = [int(b) or cfg.SOLVER.IMS_PER_BATCH
                   for b in per_train_dataset(cfg, "TRAIN_BATCH_SIZES", 0)]
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = MultiDatasetBatchSampler([len(d) for d in datasets], ratios, batch_sizes,
                                       seed=seed, rank=comm.get_rank(),
                                       world_size=comm.get_world_size())
    return torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset(datasets), batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator,
        worker_init_fn=RegisterDatasetFiles(cfg.DATASETS.REGISTER, then=worker_init_reset_seed))


def _drop_skipped(batch):
    """Collates a test batch, leaving out records the mapper skipped (None)."""
    return [x for x in batch if x is not None]


class InferenceLoader:
    """Batches of one mapped test record each; records the mapper skips as bad
    (DATASETS.SKIP_BAD_RECORDS) are left out, not replaced, so the evaluator never sees an
    image twice. ``num_skipped`` counts them (this process) and one warning reports it."""

    def __init__(self, loader: torch.utils.data.DataLoader, dataset_name: str):
        self.loader, self.dataset_name = loader, dataset_name
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.num_skipped = 0
        for batch in self.loader:
            if not batch:
                self.num_skipped += 1
                continue
            yield batch
        if self.num_skipped:
            logger.warning("dataset '%s': skipped %d bad records of %d in evaluation (see the "
                           "warnings above); its metrics cover the other images",
                           self.dataset_name, self.num_skipped, len(self.loader))


def build_test_loader(cfg, dataset_name: str) -> InferenceLoader:
    """Batch-1 test loader over Detectron2's InferenceSampler with DaTaSeg's test mapper.

    Same pieces as the train loader (records as a DatasetFromList, the mapper applied per
    item, worker init registering DATASETS.REGISTER files); bad records are left out with a
    count (see :class:`InferenceLoader`) rather than replaced by others as in training.
    """
    with skipping_bad_records(cfg.DATASETS.SKIP_BAD_RECORDS):
        dicts = DatasetCatalog.get(dataset_name)
    mapper = build_test_mapper(cfg, dataset_name)
    dataset = _MapOnly(DatasetFromList(dicts, copy=False), mapper)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, sampler=InferenceSampler(len(dataset)), drop_last=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_drop_skipped,
        worker_init_fn=RegisterDatasetFiles(cfg.DATASETS.REGISTER))
    return InferenceLoader(loader, dataset_name)


class _MapOnly(torch.utils.data.Dataset):
    """``mapper(records[i])``; None (a skipped bad record) is passed on, not retried."""

    def __init__(self, records, mapper):
        self.records, self.mapper = records, mapper

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.mapper(self.records[i])
