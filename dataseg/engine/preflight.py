"""Pre-flight: every train and test dataset is loaded (records) and checked before the first
iteration, so a format error in a test set stops the run at its start instead of after hours of
training (cfg.DATASETS.PREFLIGHT; ``train_net.py --skip-preflight``).

Besides the loaders' own checks, ``check_record_files`` reads what is cheap to read: every
image and label file (``sem_seg_file_name``, ``pan_seg_file_name``) exists and each label's
size equals its image's (and the record's ``height``/``width``), from the files' headers
(``PIL.Image.open`` reads the header only; nothing is decoded; a JPEG's EXIF orientation is
applied as Detectron2's reader applies it). A dataset of more than DATASETS.PREFLIGHT_FILES_MAX
records is checked on an evenly spaced sample of that many (the log line says so); see
docs/results/tools.md for the time per record.
"""
import logging
import os
import time
from typing import Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog
from PIL import Image

from dataseg.data.dataset_info import get_dataset_info
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
            problem, count, looked = check_record_files(
                records, cfg.DATASETS.get("PREFLIGHT_FILES_MAX", 0))
            sampled = (f" (an even sample of {looked} of its {len(records)} records; "
                       "DATASETS.PREFLIGHT_FILES_MAX)" if looked < len(records) else "")
            if problem and cfg.DATASETS.SKIP_BAD_RECORDS:
                logger.warning("%s: %d of %d checked records have missing or mismatched "
                               "files%s and will be skipped (DATASETS.SKIP_BAD_RECORDS), e.g. %s",
                               where, count, looked, sampled, problem)
            elif problem:
                more = f" ({count - 1} more records with problems)" if count > 1 else ""
                raise PreflightError(f"{where} failed: {problem}{more}{sampled} (train_net.py "
                                     "--skip-preflight skips this check)")
            if sampled:
                logger.info("%s: files checked on%s", where, sampled)
            total += len(records)
            checked.append(name)
    logger.info("Pre-flight: loaded and checked %d datasets (%d records, their files' presence "
                "and sizes) in %.1f s: %s", len(checked), total, time.perf_counter() - start,
                ", ".join(checked))
    return total


_LABEL_KEYS = (("sem_seg_file_name", "semantic label"), ("pan_seg_file_name", "panoptic label"))
_SWAPS = {5, 6, 7, 8}  # EXIF orientations that transpose the image


def _header_size(path: str, exif: bool) -> Tuple[int, int]:
    """(height, width) from the file's header (no decode); with ``exif`` a JPEG's EXIF
    orientation is applied, as Detectron2's ``read_image`` does."""
    with Image.open(path) as img:
        width, height = img.size
        if exif and img.format == "JPEG" and img.getexif().get(0x0112, 1) in _SWAPS:
            width, height = height, width
    return height, width


def _record_name(record, index: int) -> str:
    image_id = record.get("image_id", None)
    return f"record {index}" + (f" (image_id {image_id})" if image_id is not None else "")


def check_record_files(records, max_records: int = 0) -> Tuple[Optional[str], int, int]:
    """Checks the files of ``records`` (a list of Detectron2 dataset dicts or a sequence of
    them): image and label files exist, labels are the image's size, the image is the record's
    ``height`` x ``width``. ``max_records`` > 0 checks an evenly spaced sample of that many.
    Returns (the first problem in one line naming the file and record, or None; the number of
    records with problems; the number of records checked)."""
    n = len(records)
    if max_records and n > max_records:
        indices = [i * n // max_records for i in range(max_records)]
    else:
        indices = range(n)
    first, count = None, 0
    for i in indices:
        record = records[i]
        problem = _record_problem(record)
        if problem:
            count += 1
            if first is None:
                first = f"{_record_name(record, i)}: {problem}"
    return first, count, len(indices)


def _record_problem(record) -> Optional[str]:
    image = record.get("file_name")
    if not image:
        return None
    if not os.path.isfile(image):
        return f"image file not found: {image}"
    try:
        size = _header_size(image, exif=True)
    except (OSError, SyntaxError, ValueError) as e:
        return f"image file cannot be read as an image: {image} ({type(e).__name__})"
    want = (record.get("height"), record.get("width"))
    if None not in want and tuple(want) != size:
        return (f"image {image} is {size[0]}x{size[1]} (height x width) but its record says "
                f"{want[0]}x{want[1]}")
    for key, what in _LABEL_KEYS:
        label = record.get(key)
        if not label:
            continue
        if not os.path.isfile(label):
            return f"{what} file not found: {label} (image {image})"
        try:
            label_size = _header_size(label, exif=False)
        except (OSError, SyntaxError, ValueError) as e:
            return f"{what} file cannot be read as an image: {label} ({type(e).__name__})"
        if label_size != size:
            return (f"{what} {label} is {label_size[0]}x{label_size[1]} but its image {image} "
                    f"is {size[0]}x{size[1]} (height x width)")
    return None
