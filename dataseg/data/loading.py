"""Dataset-dict loaders for the on-disk formats DaTaSeg reads (called lazily by DatasetCatalog).

Each loader validates what it reads and raises :class:`DatasetFormatError` naming the file, key,
image or annotation at fault. Missing files are errors unless skipping bad records is enabled
inside ``with skipping_bad_records():``, a scope the build functions, the pre-flight check and
the trainer's evaluator open from ``cfg.DATASETS.SKIP_BAD_RECORDS``); then they are dropped and
one warning with the count is logged at the end.

Record formats (Detectron2's standard dicts plus ``"dataset_name"``, which these loaders are the
one place to set on records; the mappers put the mapper's dataset name on the model inputs):

* semantic: ``file_name``, ``sem_seg_file_name``, ``image_id`` (file stem).
* panoptic: ``file_name``, ``image_id``, ``height``, ``width``, ``pan_seg_file_name``,
  ``segments_info`` (``id``, contiguous ``category_id``, ``isthing``, ``iscrowd``, ``area``),
  ``sem_seg_file_name`` when a semantic root is given.
* instance: ``annotations`` (``bbox`` XYWH_ABS, ``bbox_mode``, contiguous ``category_id``,
  ``iscrowd``, ``segmentation`` as polygons or compressed RLE). An annotation without a mask
  (no or empty ``segmentation``, or a truthy ``ignore`` key, as the DaTaSeg Objects365 instance
  benchmark marks skipped objects) is an ignore region: ``iscrowd`` 1 with its box as the
  polygon (:func:`as_ignore_region`), so it is neither a target nor, in evaluation, a false
  positive or negative; one warning gives the count.
* box: memory-lean; no per-box dicts but ``boxes`` (float32 Nx4, XYXY absolute) and
  ``box_classes`` (int32 N, contiguous ids); crowd boxes are dropped at load time (the
  mappers would drop them anyway). Image files of json datasets are not stat-ed at load time
  (1.7M stats for Objects365); a missing one is reported by the mapper.
"""
import array
import contextlib
import contextvars
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetFormatError",
    "skipping_bad_records",
    "skip_bad_records",
    "load_semantic_dicts",
    "load_panoptic_dicts",
    "load_instance_dicts",
    "load_box_dicts",
    "is_maskless",
    "as_ignore_region",
    "check_coco_bbox",
    "bad_coco_boxes",
    "BBOX_RULE",
    "coco_box_columns",
    "vocabulary_index",
    "to_contiguous",
]

# Read by the loaders when they run (inside DatasetCatalog.get); set only for the duration of a
# ``with skipping_bad_records(...)`` block (a context variable: per thread, restored on exit).
_SKIP_BAD_RECORDS: "contextvars.ContextVar[bool]" = contextvars.ContextVar(
    "dataseg_skip_bad_records", default=False)


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed or inconsistent with the registered vocabulary."""


@contextlib.contextmanager
def skipping_bad_records(flag: bool = True):
    """Within the block, loaders run by ``DatasetCatalog.get`` skip (with one counted warning)
    records whose files are missing or bad instead of raising; the previous setting comes back
    on exit, also on an exception. ``flag=False`` makes a block strict again."""
    token = _SKIP_BAD_RECORDS.set(bool(flag))
    try:
        yield
    finally:
        _SKIP_BAD_RECORDS.reset(token)


def skip_bad_records() -> bool:
    """Current value of the skip-bad-records setting (default False: fail loudly)."""
    return _SKIP_BAD_RECORDS.get()


class _BadRecords:
    """Collects bad records: raises at once, or counts them and warns once at the end."""

    def __init__(self, dataset_name: str):
        self.dataset_name = dataset_name
        self.skip = skip_bad_records()
        self.messages: List[str] = []

    def report(self, message: str) -> None:
        if not self.skip:
            raise DatasetFormatError(f"dataset '{self.dataset_name}': {message}")
        self.messages.append(message)

    def finish(self) -> None:
        if self.messages:
            logger.warning("dataset '%s': skipped %d bad records (first: %s)", self.dataset_name,
                           len(self.messages), self.messages[0])


def _read_json(path: str):
    if not os.path.isfile(path):
        raise DatasetFormatError(f"json file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid json ({e})") from e


def _require(obj, key: str, path: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetFormatError(f"{path}: {where} has no key '{key}'")
    return obj[key]


def _list_files(root: str, ext: str) -> Dict[str, str]:
    """Maps relative path without extension -> absolute path for files under root ending in ext."""
    if not os.path.isdir(root):
        raise DatasetFormatError(f"directory not found: {root}")
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            if fn.endswith(ext):
                full = os.path.join(dirpath, fn)
                out[os.path.relpath(full, root)[: -len(ext)]] = full
    return out


def load_semantic_dicts(dataset_name: str, image_root: str, sem_seg_root: str,
                        image_ext: str = ".jpg", label_ext: str = ".png") -> List[dict]:
    """Pairs <image_root>/<stem><image_ext> with <sem_seg_root>/<stem><label_ext> by stem."""
    images = _list_files(image_root, image_ext)
    labels = _list_files(sem_seg_root, label_ext)
    if not images:
        raise DatasetFormatError(f"dataset '{dataset_name}': no '*{image_ext}' images in "
                                 f"{image_root}")
    bad = _BadRecords(dataset_name)
    records = []
    for stem in sorted(images):
        if stem not in labels:
            bad.report(f"label file missing for image {images[stem]}: expected "
                       f"{os.path.join(sem_seg_root, stem + label_ext)}")
            continue
        records.append({"file_name": images[stem], "sem_seg_file_name": labels[stem],
                        "image_id": stem, "dataset_name": dataset_name})
    for stem in sorted(set(labels) - set(images)):
        bad.report(f"image file missing for label {labels[stem]}: expected "
                   f"{os.path.join(image_root, stem + image_ext)}")
    bad.finish()
    return records


def _category_map(categories: Sequence[dict]) -> Dict[int, int]:
    return {int(c["id"]): i for i, c in enumerate(categories)}


# cityscapesscripts' createPanopticImgs names files "<city>_<seq>_<frame><suffix>" without the
# city folder: images live in leftImg8bit/<split>/<city>/<...>_leftImg8bit.png, panoptic PNGs
# flat in gtFine/cityscapes_panoptic_<split>/<...>_gtFine_panoptic.png.
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_PANOPTIC_SUFFIX = "_gtFine_panoptic.png"
_CITYSCAPES_SUFFIXES = (CITYSCAPES_IMAGE_SUFFIX, CITYSCAPES_PANOPTIC_SUFFIX)
_PANOPTIC_KEY_ORDER = ("file_name", "image_id", "height", "width", "pan_seg_file_name",
                       "segments_info", "sem_seg_file_name", "dataset_name")


def _panoptic_file_candidates(root: str, file_name: str, suffix: Optional[str]) -> List[str]:
    """Paths where a file named in a panoptic json may be, in the order they are tried.

    ``<root>/<file_name>`` first (COCO, ADE, Mask2Former layouts), then
    ``<root>/<city>/<file_name>`` with ``city`` the part of the base name before the first
    "_" (Cityscapes). When ``suffix`` is given and the name ends in the other Cityscapes suffix
    (e.g. an image entry named "..._gtFine_panoptic.png"), the same frame with ``suffix`` is
    tried too, in both places.
    """
    names = [file_name]
    if suffix is not None:
        for other in _CITYSCAPES_SUFFIXES:
            if other != suffix and file_name.endswith(other):
                names.append(file_name[: -len(other)] + suffix)
    out = []
    for name in names:
        out.append(os.path.join(root, name))
        base = os.path.basename(name)
        if "_" in base and base.index("_") > 0 and os.path.dirname(name) == "":
            out.append(os.path.join(root, base.split("_", 1)[0], name))
    return list(dict.fromkeys(out))


def load_panoptic_dicts(dataset_name: str, image_root: str, panoptic_root: str,
                        panoptic_json: str, categories: Sequence[dict],
                        sem_seg_root: Optional[str] = None) -> List[dict]:
    """Reads a COCO panoptic json + PNG folder into Detectron2 panoptic records.

    Image and PNG names are resolved by :func:`_panoptic_file_candidates`, so the json that
    cityscapesscripts writes (names without the city folder) works as is; a missing file is
    reported with every path tried.
    """
    data = _read_json(panoptic_json)
    images = _require(data, "images", panoptic_json, "top level")
    anns = _require(data, "annotations", panoptic_json, "top level")
    id_map = _category_map(categories)
    is_thing = [bool(c.get("isthing", 1)) for c in categories]
    image_by_id = {}
    for k, img in enumerate(images):
        where = f"images[{k}]"
        image_by_id[_require(img, "id", panoptic_json, where)] = img
        for key in ("file_name", "height", "width"):
            _require(img, key, panoptic_json, where)
    bad = _BadRecords(dataset_name)
    records = []
    for k, ann in enumerate(anns):
        where = f"annotations[{k}]"
        image_id = _require(ann, "image_id", panoptic_json, where)
        png = _require(ann, "file_name", panoptic_json, where)
        segs = _require(ann, "segments_info", panoptic_json, where)
        if image_id not in image_by_id:
            raise DatasetFormatError(f"{panoptic_json}: {where} refers to image_id {image_id} "
                                     "which is not in 'images'")
        img = image_by_id[image_id]
        segments = []
        for s in segs:
            seg_id = _require(s, "id", panoptic_json, f"{where} (image {image_id}) segment")
            cat = _require(s, "category_id", panoptic_json,
                           f"{where} (image {image_id}) segment {seg_id}")
            if cat not in id_map:
                raise DatasetFormatError(
                    f"{panoptic_json}: image {image_id}, segment id {seg_id}: category_id {cat} "
                    f"is not in the registered vocabulary of '{dataset_name}'")
            contiguous = id_map[cat]
            segments.append({"id": int(seg_id), "category_id": contiguous,
                             "isthing": is_thing[contiguous], "iscrowd": int(s.get("iscrowd", 0)),
                             "area": s.get("area")})
        files = {"file_name": ("image", image_root, img["file_name"], CITYSCAPES_IMAGE_SUFFIX),
                 "pan_seg_file_name": ("panoptic PNG", panoptic_root, png,
                                       CITYSCAPES_PANOPTIC_SUFFIX)}
        if sem_seg_root is not None:
            files["sem_seg_file_name"] = ("semantic PNG", sem_seg_root, png, None)
        rec = {"image_id": image_id, "height": int(img["height"]), "width": int(img["width"]),
               "segments_info": segments, "dataset_name": dataset_name}
        for key, (what, root, name, suffix) in files.items():
            tried = _panoptic_file_candidates(root, name, suffix)
            rec[key] = next((p for p in tried if os.path.isfile(p)), None)
            if rec[key] is None:
                bad.report(f"{what} file missing for image {image_id} ('{name}' in "
                           f"{panoptic_json}); tried: {', '.join(tried)}")
                break
        else:
            records.append({k: rec[k] for k in _PANOPTIC_KEY_ORDER if k in rec})
    bad.finish()
    return records


def _convert_segmentation(segm, path: str, ann_id):
    """Polygons: drops ones with < 3 points (None if none left); RLE: compressed form."""
    from pycocotools import mask as mask_util

    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise DatasetFormatError(f"{path}: annotation {ann_id}: RLE segmentation needs "
                                     "'counts' and 'size'")
        if isinstance(segm["counts"], list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return segm
    if isinstance(segm, list):
        polys = [list(map(float, p)) for p in segm if len(p) >= 6 and len(p) % 2 == 0]
        return polys or None
    raise DatasetFormatError(f"{path}: annotation {ann_id}: 'segmentation' must be polygons or "
                             f"RLE, got {type(segm).__name__}")


def is_maskless(ann: dict) -> bool:
    """An instance annotation without a mask: no or empty ``segmentation``, or ``ignore``."""
    return not ann.get("segmentation") or bool(ann.get("ignore", 0))


def as_ignore_region(ann: dict) -> dict:
    """A copy of a COCO annotation as an ignore region: ``iscrowd`` 1, its box as the polygon
    when it has no mask, ``area`` from the box when absent, no ``ignore`` key.

    The one home of this rule: the instance loader, the COCO evaluator of instance datasets and
    datasets/prepare_objects365.py use it.
    """
    ann = dict(ann)
    x, y, w, h = (float(v) for v in ann["bbox"])
    ann["iscrowd"] = 1
    if not ann.get("segmentation"):
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    ann.setdefault("area", w * h)
    ann.pop("ignore", None)
    return ann


BBOX_RULE = "'bbox' must be 4 finite numbers [x, y, w, h] with w, h >= 0"


def bad_coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """Mask of the rows of an Mx4 XYWH array that break :data:`BBOX_RULE` (the one rule every
    loader applies to a COCO ``bbox``)."""
    return ~np.isfinite(boxes).all(1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)


def check_coco_bbox(bbox, path: str, where: str) -> List[float]:
    """One COCO ``bbox`` checked against :data:`BBOX_RULE`; returns it as 4 floats."""
    try:
        box = [float(v) for v in bbox]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or bad_coco_boxes(np.array([box], np.float64))[0]:
        raise DatasetFormatError(f"{path}: {where}: {BBOX_RULE}, got {bbox!r}")
    return box


def load_instance_dicts(dataset_name: str, image_root: str, json_file: str,
                        categories: Sequence[dict]) -> List[dict]:
    """Reads a COCO instance json (polygons or RLE) into Detectron2 instance records.

    Mask-less annotations become ignore regions (see the module doc)."""
    data = _read_json(json_file)
    images = _require(data, "images", json_file, "top level")
    anns = _require(data, "annotations", json_file, "top level")
    id_map = _category_map(categories)
    per_image: Dict[object, list] = {}
    order = []
    for k, img in enumerate(images):
        for key in ("id", "file_name", "height", "width"):
            _require(img, key, json_file, f"images[{k}]")
        per_image[img["id"]] = []
        order.append(img)
    dropped = maskless = 0
    for k, ann in enumerate(anns):
        ann_id = ann.get("id", f"#{k}") if isinstance(ann, dict) else f"#{k}"
        where = f"annotation {ann_id}"
        for key in ("image_id", "category_id", "bbox"):
            _require(ann, key, json_file, where)
        check_coco_bbox(ann["bbox"], json_file, f"image {ann['image_id']}, {where}")
        if is_maskless(ann):
            maskless += 1
            ann = as_ignore_region(ann)
        if ann["image_id"] not in per_image:
            raise DatasetFormatError(f"{json_file}: {where} refers to image_id "
                                     f"{ann['image_id']} which is not in 'images'")
        if ann["category_id"] not in id_map:
            raise DatasetFormatError(
                f"{json_file}: image {ann['image_id']}, annotation {ann_id}: category_id "
                f"{ann['category_id']} is not in the registered vocabulary of '{dataset_name}'")
        segm = _convert_segmentation(ann["segmentation"], json_file, ann_id)
        if segm is None:
            dropped += 1
            continue
        per_image[ann["image_id"]].append({
            "bbox": [float(v) for v in ann["bbox"]], "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0)),
            "segmentation": segm})
    if dropped:
        logger.warning("dataset '%s': dropped %d annotations without a valid polygon (%s)",
                       dataset_name, dropped, json_file)
    if maskless:
        logger.warning("dataset '%s': %d annotations without a mask (no/empty 'segmentation' or "
                       "'ignore') are ignore regions: neither targets nor, in evaluation, false "
                       "positives or negatives (%s)", dataset_name, maskless, json_file)
    return [{"file_name": os.path.join(image_root, img["file_name"]), "image_id": img["id"],
             "height": int(img["height"]), "width": int(img["width"]),
             "annotations": per_image[img["id"]], "dataset_name": dataset_name}
            for img in order]


class _LeanCocoHook:
    """json ``object_hook`` that streams images/annotations into flat arrays.

    ``json.load`` would otherwise hold one Python dict per box (about 1 KB each: 25 GB for
    Objects365); the hook keeps 8 numbers per box and returns None in place of the dict.
    """

    def __init__(self):
        self.ann_id = array.array("q")
        self.ann_image = array.array("q")
        self.ann_cat = array.array("q")
        self.ann_box = array.array("f")
        self.ann_crowd = array.array("B")
        self.img_id = array.array("q")
        self.img_h = array.array("i")
        self.img_w = array.array("i")
        self.img_file: List[str] = []

    def __call__(self, d):
        if "bbox" in d and "image_id" in d and "category_id" in d:
            self.ann_id.append(int(d.get("id", -1)))
            self.ann_image.append(int(d["image_id"]))
            self.ann_cat.append(int(d["category_id"]))
            self.ann_box.extend(d["bbox"][:4] if len(d["bbox"]) >= 4 else [np.nan] * 4)
            self.ann_crowd.append(1 if d.get("iscrowd", 0) else 0)
            return None
        if "file_name" in d and "id" in d and "height" in d and "width" in d:
            self.img_id.append(int(d["id"]))
            self.img_h.append(int(d["height"]))
            self.img_w.append(int(d["width"]))
            self.img_file.append(d["file_name"])
            return None
        return d


def vocabulary_index(categories: Sequence[dict]) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted dataset category ids, their contiguous ids): lookups with :func:`to_contiguous`."""
    ids = np.array([int(c["id"]) for c in categories], np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], order.astype(np.int32)


def to_contiguous(category: np.ndarray, index: Tuple[np.ndarray, np.ndarray]
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Contiguous ids (int32) of dataset ``category`` ids, and the mask of ids not in the
    vocabulary ``index`` (their contiguous id is meaningless)."""
    sorted_ids, contiguous = index
    if not len(sorted_ids):
        return np.zeros(len(category), np.int32), np.ones(len(category), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, category), len(sorted_ids) - 1)
    return contiguous[pos], sorted_ids[pos] != category


def coco_box_columns(json_file: str, raw: Dict[str, object],
                     vocabulary: Optional[Tuple[str, Sequence[dict]]] = None
                     ) -> Dict[str, np.ndarray]:
    """The one place that checks and groups the records of a COCO box json, for the json path
    (:func:`load_box_dicts`) and the columnar cache (``columnar.parse_coco_boxes``) alike, so
    the two cannot disagree on what is bad or how they say it.

    ``raw`` (consumed: its entries are popped, so the caller holds no second copy at
    Objects365 scale) holds the json's columns in json order: ``image_id`` int64[N],
    ``height``/``width`` int32[N], ``file_name`` (N str), ``ann_id`` / ``ann_image`` /
    ``category`` int64[M], ``bbox`` float32[M, 4] XYWH, ``crowd`` uint8[M]. Checked in this
    order, the first fault raising :class:`DatasetFormatError` naming the json, image and
    annotation: duplicate image ids, annotations of unknown images, :data:`BBOX_RULE`, and,
    when ``vocabulary`` = (dataset name, categories) is given, category ids outside it.

    Returns ``image_id``, ``height``, ``width``, ``name_off`` int64[N+1] + ``names`` uint8
    (utf-8 file names, concatenated), ``box_off`` int64[N+1] (boxes of image i are rows
    box_off[i]:box_off[i+1], in json order), ``boxes`` float32[M, 4] XYXY absolute,
    ``category`` int16/32/64[M] (dataset ids, the smallest dtype that holds them), ``crowd``
    uint8[M], ``n_noncrowd`` int32[N] and ``category_ids`` int64 (distinct ids, sorted).
    """
    img_id, height, width = raw.pop("image_id"), raw.pop("height"), raw.pop("width")
    names = [f.encode("utf-8") for f in raw.pop("file_name")]
    n = len(img_id)
    name_off = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, names), np.int64, n), out=name_off[1:])
    names_blob = np.frombuffer(b"".join(names), np.uint8) if names else np.zeros(0, np.uint8)
    del names
    ann_id, ann_image = raw.pop("ann_id"), raw.pop("ann_image")
    category, boxes, crowd = raw.pop("category"), raw.pop("bbox"), raw.pop("crowd")

    order = np.argsort(img_id, kind="stable")
    sorted_ids = img_id[order]
    dup = np.diff(sorted_ids) == 0
    if dup.any():
        raise DatasetFormatError(f"{json_file}: image id {sorted_ids[1:][dup][0]} appears "
                                 "twice in 'images'")
    m = len(ann_image)
    if m:
        pos = np.minimum(np.searchsorted(sorted_ids, ann_image), max(n - 1, 0))
        unknown = (sorted_ids[pos] != ann_image) if n else np.ones(m, bool)
        if unknown.any():
            k = int(np.flatnonzero(unknown)[0])
            raise DatasetFormatError(f"{json_file}: annotation {ann_id[k]} refers to image_id "
                                     f"{ann_image[k]} which is not in 'images'")
        ann_img_idx = order[pos]
        del pos, unknown
    else:
        ann_img_idx = np.zeros(0, np.int64)
    del order, sorted_ids
    bad = bad_coco_boxes(boxes)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DatasetFormatError(f"{json_file}: image {ann_image[k]}, annotation {ann_id[k]}: "
                                 f"{BBOX_RULE}")
    del bad
    if vocabulary is not None:
        dataset_name, categories = vocabulary
        unknown = to_contiguous(category, vocabulary_index(categories))[1]
        if unknown.any():
            k = int(np.flatnonzero(unknown)[0])
            raise DatasetFormatError(
                f"{json_file}: image {ann_image[k]}, annotation {ann_id[k]}: category_id "
                f"{category[k]} is not in the registered vocabulary of '{dataset_name}'")
        del unknown
    del ann_id, ann_image
    boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY in float32
    counts = np.bincount(ann_img_idx, minlength=n)
    n_noncrowd = np.bincount(ann_img_idx, weights=(crowd == 0), minlength=n).astype(np.int32)
    by_img = np.argsort(ann_img_idx, kind="stable")
    del ann_img_idx
    boxes = boxes[by_img]
    category = category[by_img]
    crowd = crowd[by_img]
    del by_img
    box_off = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=box_off[1:])
    # the smallest signed dtype that holds every category id (int16 for Objects365's 1..365)
    for dt in (np.int16, np.int32):
        info = np.iinfo(dt)
        if not len(category) or (category.min() >= info.min and category.max() <= info.max):
            category = category.astype(dt)
            break
    return {"image_id": img_id, "height": height, "width": width, "name_off": name_off,
            "names": names_blob, "box_off": box_off, "boxes": boxes, "category": category,
            "crowd": crowd, "n_noncrowd": n_noncrowd,
            "category_ids": np.unique(category).astype(np.int64)}


def load_box_dicts(dataset_name: str, image_root: str, json_file: str,
                   categories: Sequence[dict]) -> List[dict]:
    """Reads a COCO box json (e.g. Objects365) into memory-lean records (see module doc);
    the records are checked by :func:`coco_box_columns`, as the columnar cache's are."""
    if not os.path.isfile(json_file):
        raise DatasetFormatError(f"json file not found: {json_file}")
    hook = _LeanCocoHook()
    try:
        with open(json_file) as f:
            data = json.load(f, object_hook=hook)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{json_file}: not valid json ({e})") from e
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{json_file}: malformed image or annotation entry ({e})") from e
    images = _require(data, "images", json_file, "top level")
    anns = _require(data, "annotations", json_file, "top level")
    for k, img in enumerate(images):  # entries the hook did not consume lack a key
        if img is not None:
            for key in ("id", "file_name", "height", "width"):
                _require(img, key, json_file, f"images[{k}]")
    for k, ann in enumerate(anns):
        if ann is not None:
            where = f"annotation {ann.get('id', '#' + str(k)) if isinstance(ann, dict) else k}"
            for key in ("image_id", "category_id", "bbox"):
                _require(ann, key, json_file, where)
    del data, images, anns

    file_names = hook.img_file
    cols = coco_box_columns(json_file, {
        "image_id": np.frombuffer(hook.img_id, np.int64),
        "height": np.frombuffer(hook.img_h, np.int32),
        "width": np.frombuffer(hook.img_w, np.int32), "file_name": file_names,
        "ann_id": np.frombuffer(hook.ann_id, np.int64),
        "ann_image": np.frombuffer(hook.ann_image, np.int64),
        "category": np.frombuffer(hook.ann_cat, np.int64),
        "bbox": np.frombuffer(hook.ann_box, np.float32).reshape(-1, 4).copy(),
        "crowd": np.frombuffer(hook.ann_crowd, np.uint8)}, (dataset_name, categories))
    keep = cols["crowd"] == 0  # crowd boxes are dropped at load time
    boxes = cols["boxes"][keep]
    classes = to_contiguous(cols["category"][keep], vocabulary_index(categories))[0]
    ends = np.cumsum(cols["n_noncrowd"])
    img_id, heights, widths = cols["image_id"], cols["height"], cols["width"]
    records = []
    for i, fn in enumerate(file_names):
        s, e = int(ends[i] - cols["n_noncrowd"][i]), int(ends[i])
        records.append({"file_name": os.path.join(image_root, fn), "image_id": int(img_id[i]),
                        "height": int(heights[i]), "width": int(widths[i]),
                        "boxes": boxes[s:e], "box_classes": classes[s:e],
                        "dataset_name": dataset_name})
    return records
