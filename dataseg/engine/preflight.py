"""Pre-flight: every train and test dataset is loaded (records) and checked before the first
iteration, so a format error in a test set stops the run at its start instead of after hours of
training (cfg.DATASETS.PREFLIGHT; ``train_net.py --skip-preflight``).

Besides the loaders' own checks, ``dataseg.data.file_checks`` reads what is cheap to read:
every image and label file exists and each label's size equals its image's, from the files'
headers (no decode); a dataset of more than DATASETS.PREFLIGHT_FILES_MAX records is checked on
an evenly spaced sample of that many. The train sets get the same check where the train loader
loads them (``dataseg.data.build.get_train_dataset_dicts``), so they are not loaded twice.
"""
import logging
import time
from typing import Sequence

from detectron2.data import DatasetCatalog

from dataseg.data.dataset_info import get_dataset_info
from dataseg.data.file_checks import check_dataset_files, check_record_files
from dataseg.data.loading import DatasetFormatError, skipping_bad_records
from dataseg.engine.evaluation import EVALUATOR_TABLE

__all__ = ["preflight", "PreflightError", "check_record_files"]

logger = logging.getLogger(__name__)


class PreflightError(DatasetFormatError):
    """A dataset of the config cannot be loaded or evaluated; names the dataset and key."""


def preflight(cfg, keys: Sequence[str] = ("TRAIN", "TEST")) -> int:
    """Loads the records of every dataset in ``cfg.DATASETS.<key>`` for each key and checks
    that there are some and that test sets have an evaluator. Returns the number of records.

    The loaders' own checks apply (missing files, json keys, ids outside the vocabulary, bad
    boxes; with DATASETS.SKIP_BAD_RECORDS, missing files are skipped with a counted warning).
    """
    start, total, checked = time.perf_counter(), 0, []
    for key in keys:
        for name in cfg.DATASETS[key]:
            where = f"pre-flight check of DATASETS.{key} '{name}'"
            try:
                info = get_dataset_info(name)
            except KeyError as e:
                raise PreflightError(f"{where}: {e.args[0] if e.args else e}") from e
            if key == "TEST" and info.evaluator_type not in EVALUATOR_TABLE:
                raise PreflightError(
                    f"{where}: no evaluator for evaluator_type {info.evaluator_type!r} (a "
                    "training-only set?); remove it from DATASETS.TEST")
            try:
                with skipping_bad_records(cfg.DATASETS.SKIP_BAD_RECORDS):
                    records = DatasetCatalog.get(name)
            except DatasetFormatError as e:
                raise PreflightError(f"{where} failed: {e} (train_net.py --skip-preflight "
                                     "skips this check)") from e
            if not records:
                raise PreflightError(f"{where}: the dataset has no records")
            check_dataset_files(records, where, cfg.DATASETS.get("PREFLIGHT_FILES_MAX", 0),
                                cfg.DATASETS.SKIP_BAD_RECORDS, PreflightError)
            total += len(records)
            checked.append(name)
    logger.info("Pre-flight: loaded and checked %d datasets (%d records, their files' presence "
                "and sizes) in %.1f s: %s", len(checked), total, time.perf_counter() - start,
                ", ".join(checked))
    return total
