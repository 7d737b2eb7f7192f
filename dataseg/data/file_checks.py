"""Cheap checks of a dataset's files before training (issue 25): every image and label file
(``sem_seg_file_name``, ``pan_seg_file_name``) exists, each label's size equals its image's,
and the image's equals the record's ``height``/``width``, read from the files' headers
(``PIL.Image.open`` reads the header only; nothing is decoded; a JPEG's EXIF orientation is
applied as Detectron2's ``read_image`` applies it). Used by the pre-flight check
(``dataseg.engine.preflight``) for test sets and by the train loader for train sets
(``dataseg.data.build.get_train_dataset_dicts``); timing in docs/results/tools.md.
"""
import logging
import os
from typing import Optional, Tuple

from PIL import Image

from dataseg.data.loading import DatasetFormatError

__all__ = ["check_record_files", "check_dataset_files"]

logger = logging.getLogger(__name__)

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


def check_dataset_files(records, where: str, max_records: int = 0, skip: bool = False,
                        error=DatasetFormatError) -> None:
    """``check_record_files`` of one dataset's records: the first problem raised as ``error``
    (one line: ``where``, record, file; with the count of other records with problems), or,
    with ``skip`` (DATASETS.SKIP_BAD_RECORDS), a warning with the count (the loaders skip
    those records)."""
    problem, count, looked = check_record_files(records, max_records)
    sampled = (f" (an even sample of {looked} of its {len(records)} records; "
               "DATASETS.PREFLIGHT_FILES_MAX)" if looked < len(records) else "")
    if problem and skip:
        logger.warning("%s: %d of %d checked records have missing or mismatched files%s and "
                       "will be skipped (DATASETS.SKIP_BAD_RECORDS), e.g. %s", where, count,
                       looked, sampled, problem)
    elif problem:
        more = f" ({count - 1} more records with problems)" if count > 1 else ""
        raise error(f"{where} failed: {problem}{more}{sampled} (train_net.py --skip-preflight "
                    "skips this check)")
    elif sampled:
        logger.info("%s: files checked on%s", where, sampled)


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


def _file_size(path: str, what: str, exif: bool, missing_note: str = ""):
    """((height, width), None) of the image file ``path`` from its header, or
    (None, the problem)."""
    if not os.path.isfile(path):
        return None, f"{what} file not found: {path}{missing_note}"
    try:
        return _header_size(path, exif=exif), None
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"{what} file cannot be read as an image: {path} ({type(e).__name__})"


def _record_problem(record) -> Optional[str]:
    image = record.get("file_name")
    if not image:
        return None
    size, problem = _file_size(image, "image", exif=True)
    if problem:
        return problem
    want = (record.get("height"), record.get("width"))
    if None not in want and tuple(want) != size:
        return (f"image {image} is {size[0]}x{size[1]} (height x width) but its record says "
                f"{want[0]}x{want[1]}")
    for key, what in _LABEL_KEYS:
        label = record.get(key)
        if not label:
            continue
        label_size, problem = _file_size(label, what, exif=False,
                                         missing_note=f" (image {image})")
        if problem:
            return problem
        if label_size != size:
            return (f"{what} {label} is {label_size[0]}x{label_size[1]} but its image {image} "
                    f"is {size[0]}x{size[1]} (height x width)")
    return None
