"""Dataset mappers: one per supervision format, chosen by the dataset's metadata task.

Train outputs follow docs/DESIGN.md ("Dataset dicts and mapper outputs"): ``image`` (uint8
3xHxW), ``dataset_name``, ``task``, ``height``/``width`` (original size), ``file_name``,
``image_id`` and ``instances`` with ``gt_classes`` (int64), ``gt_boxes`` (XYXY, tight around the
mask when there is one) and ``gt_masks`` (bool NxHxW; not for box data); semantic data also
gets ``sem_seg`` (int64 HxW, ignore = the dataset's ``ignore_label``: 255, or e.g. 65535 for
16-bit labels of vocabularies above 255 classes). Instances whose mask/box is empty after the
augmentation are dropped, so a crop without annotations yields an ``Instances`` with 0 rows and
correctly shaped tensors.

Crowd annotations (``iscrowd=1``) give no target in panoptic and instance data, as in
Mask2Former: their pixels belong to no ground-truth mask.

Bad files raise :class:`~dataseg.data.loading.DatasetFormatError` naming them; with
``skip_bad_records`` (cfg.DATASETS.SKIP_BAD_RECORDS) the mapper returns None instead and logs
a warning with a count. The training loader answers None by drawing another record; the test
loader (``build.build_test_loader``) leaves the record out, so no image is evaluated twice.
"""
import copy
import logging
from typing import List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from detectron2.structures.masks import polygons_to_bitmask
from PIL import Image
from pycocotools import mask as mask_util

from .augmentation import build_augmentations
from .dataset_info import get_dataset_info
from .loading import DatasetFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "SemanticDatasetMapper",
    "PanopticDatasetMapper",
    "InstanceDatasetMapper",
    "BoxDatasetMapper",
    "TestDatasetMapper",
    "build_train_mapper",
    "build_test_mapper",
]


def _read_image(file_name: str, image_format: str, record: dict) -> np.ndarray:
    try:
        image = utils.read_image(file_name, format=image_format)
    except FileNotFoundError as e:
        raise DatasetFormatError(f"image file not found: {file_name}") from e
    except Exception as e:  # PIL raises several types for corrupt files
        raise DatasetFormatError(f"cannot read image {file_name}: {e}") from e
    h, w = image.shape[:2]
    if ("height" in record and record["height"] != h) or ("width" in record and
                                                          record["width"] != w):
        raise DatasetFormatError(f"image {file_name} is {w}x{h} (WxH) but its record says "
                                 f"{record.get('width')}x{record.get('height')}")
    return image


def _read_label(file_name: str, image_file: str, image_shape, rgb: bool) -> np.ndarray:
    try:
        with Image.open(file_name) as im:
            label = np.asarray(im.convert("RGB") if rgb else im)
    except FileNotFoundError as e:
        raise DatasetFormatError(f"label file not found: {file_name}") from e
    except Exception as e:
        raise DatasetFormatError(f"cannot read label file {file_name}: {e}") from e
    if not rgb and label.ndim != 2:
        raise DatasetFormatError(f"label file {file_name} must be single-channel, got shape "
                                 f"{label.shape}")
    if label.shape[:2] != tuple(image_shape[:2]):
        raise DatasetFormatError(
            f"label file {file_name} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
            f"{image_file} is {image_shape[1]}x{image_shape[0]}")
    return label


def _read_semantic_label(record: dict, image_shape, num_classes: Optional[int],
                         ignore_label: int) -> np.ndarray:
    """Reads an 8- or 16-bit label map; every value must be a class (< K) or ``ignore_label``."""
    label = _read_label(record["sem_seg_file_name"], record["file_name"], image_shape, False)
    if num_classes is not None:
        values = np.unique(label).astype(np.int64)
        bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
        if len(bad):
            raise DatasetFormatError(
                f"label file {record['sem_seg_file_name']} has values {bad.tolist()[:10]} that "
                f"are neither a class (< {num_classes}) nor ignore ({ignore_label})")
    return label


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _mask_instances(image_size, classes: List[int], masks: List[np.ndarray]) -> Instances:
    """Instances from per-object masks; drops empty masks; boxes tight around the masks."""
    h, w = image_size
    inst = Instances((h, w))
    if masks:
        m = torch.as_tensor(np.stack(masks).astype(bool))
        c = torch.as_tensor(classes, dtype=torch.int64)
        keep = m.flatten(1).any(1)
        m, c = m[keep], c[keep]
    else:
        m, c = torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    inst.gt_classes = c
    inst.gt_masks = m
    inst.gt_boxes = BitMasks(m).get_bounding_boxes() if len(m) else Boxes(torch.zeros(0, 4))
    return inst


class _BaseMapper:
    """Shared reading, augmentation, output fields and bad-record policy."""

    task: Optional[str] = None

    @configurable
    def __init__(self, *, dataset_name: str, augmentations: List[T.Augmentation],
                 image_format: str = "RGB", ignore_label: int = 255,
                 skip_bad_records: bool = False, num_classes: Optional[int] = None):
        self.dataset_name = dataset_name
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.skip_bad_records = skip_bad_records
        self.num_classes = num_classes
        self.num_skipped = 0

    @classmethod
    def from_config(cls, cfg, dataset_name: str, is_train: bool = True):
        info = get_dataset_info(dataset_name)
        return {"dataset_name": dataset_name,
                "augmentations": build_augmentations(cfg, dataset_name, is_train),
                "image_format": cfg.INPUT.FORMAT, "ignore_label": info.ignore_label,
                "skip_bad_records": cfg.DATASETS.SKIP_BAD_RECORDS,
                "num_classes": info.num_classes}

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        record = copy.copy(dataset_dict)
        try:
            return self._map(record)
        except DatasetFormatError as e:
            if not self.skip_bad_records:
                raise
            self.num_skipped += 1
            logger.warning("dataset '%s': skipped bad record %d so far in this process: %s",
                           self.dataset_name, self.num_skipped, e)
            return None

    def _common(self, record: dict, image: np.ndarray) -> dict:
        return {"image": _image_tensor(image), "dataset_name": self.dataset_name,
                "task": self.task, "height": record.get("height"), "width": record.get("width"),
                "file_name": record["file_name"], "image_id": record.get("image_id")}

    def _read_and_augment(self, record: dict):
        """The image as read, the augmented image (HxWxC) and the transforms that made it (for
        the caller to apply to masks or boxes)."""
        image = self._read(record)
        aug = T.AugInput(image)
        transforms = self.augmentations(aug)
        return image, aug.image, transforms

    def _read(self, record: dict) -> np.ndarray:
        image = _read_image(record["file_name"], self.image_format, record)
        record.setdefault("height", image.shape[0])
        record.setdefault("width", image.shape[1])
        return image

    def _map(self, record: dict) -> dict:
        raise NotImplementedError


class SemanticDatasetMapper(_BaseMapper):
    """Label map -> ``sem_seg`` and one binary mask per class present (ignore in none)."""

    task = "semantic"

    def _map(self, record):
        image = self._read(record)
        label = _read_semantic_label(record, image.shape, self.num_classes, self.ignore_label)
        if label.dtype != np.uint8 or self.ignore_label > 255:
            # 16-bit labels (> 255 classes): float64 is exact and every Detectron2 resize/pad
            # path supports it (PIL's uint8-only path would not, nor padding with 65535).
            label = label.astype(np.float64)
        aug = T.AugInput(image, sem_seg=label)
        self.augmentations(aug)
        sem = aug.sem_seg.astype(np.int64)
        out = self._common(record, aug.image)
        classes = [int(c) for c in np.unique(sem) if c != self.ignore_label]
        out["instances"] = _mask_instances(sem.shape, classes, [sem == c for c in classes])
        out["sem_seg"] = torch.as_tensor(sem)
        return out


class PanopticDatasetMapper(_BaseMapper):
    """COCO panoptic PNG -> one mask per non-crowd segment (things and stuff alike)."""

    task = "panoptic"

    def _map(self, record):
        image = self._read(record)
        rgb = _read_label(record["pan_seg_file_name"], record["file_name"], image.shape, True)
        rgb = rgb.astype(np.int64)  # uint8 * 256 overflows under numpy 2's promotion rules
        pan = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        segments = record["segments_info"]
        unknown = np.setdiff1d(np.unique(pan), [0] + [s["id"] for s in segments])
        if len(unknown):
            raise DatasetFormatError(
                f"panoptic PNG {record['pan_seg_file_name']} has segment ids "
                f"{unknown.tolist()[:10]} missing from segments_info of image {record['image_id']}")
        # float64: exact for ids < 2**53 and supported by every Detectron2 resize path.
        aug = T.AugInput(image, sem_seg=pan.astype(np.float64))
        self.augmentations(aug)
        pan = aug.sem_seg.astype(np.int64)
        kept = [s for s in segments if not s.get("iscrowd", 0)]
        out = self._common(record, aug.image)
        out["instances"] = _mask_instances(pan.shape, [s["category_id"] for s in kept],
                                           [pan == s["id"] for s in kept])
        return out


class InstanceDatasetMapper(_BaseMapper):
    """COCO instance annotations (polygons or RLE) -> per-instance masks."""

    task = "instance"

    def _map(self, record):
        image, augmented, transforms = self._read_and_augment(record)
        classes, masks = [], []
        for k, obj in enumerate(record.get("annotations", [])):
            if obj.get("iscrowd", 0):
                continue
            segm = obj["segmentation"]
            if isinstance(segm, dict) and list(segm["size"]) != [image.shape[0], image.shape[1]]:
                raise DatasetFormatError(
                    f"image {record['file_name']}: annotation {k} has an RLE of size "
                    f"{list(segm['size'])} but the image is {list(image.shape[:2])} (HxW)")
            # Rasterise at the original size, then transform the mask like a label map:
            # exact, and no shapely needed (fvcore's polygon crop imports it).
            if isinstance(segm, dict):
                mask = mask_util.decode(segm)
            else:
                mask = polygons_to_bitmask(segm, image.shape[0], image.shape[1])
            masks.append(transforms.apply_segmentation(mask.astype(np.uint8)).astype(bool))
            classes.append(obj["category_id"])
        out = self._common(record, augmented)
        out["instances"] = _mask_instances(augmented.shape[:2], classes, masks)
        return out


class BoxDatasetMapper(_BaseMapper):
    """Boxes only (no masks): lean ``boxes``/``box_classes`` records or standard annotations."""

    task = "box"

    def _map(self, record):
        image, augmented, transforms = self._read_and_augment(record)
        h, w = augmented.shape[:2]
        if "boxes" in record:
            boxes = np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4)
            classes = np.asarray(record["box_classes"], dtype=np.int64)
        else:
            anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
            boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                              for a in anns], dtype=np.float32).reshape(-1, 4)
            classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        boxes = Boxes(torch.as_tensor(transforms.apply_box(boxes), dtype=torch.float32)
                      .reshape(-1, 4))
        boxes.clip((h, w))
        keep = boxes.nonempty()
        inst = Instances((h, w))
        inst.gt_boxes = boxes[keep]
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)[keep]
        out = self._common(record, augmented)
        out["instances"] = inst
        return out


class TestDatasetMapper(_BaseMapper):
    """Reads and resizes the image for inference; targets are read by the evaluators."""

    @configurable
    def __init__(self, *, task: str, **kwargs):
        super().__init__(**kwargs)
        self.task = task

    @classmethod
    def from_config(cls, cfg, dataset_name: str, is_train: bool = False):
        ret = super().from_config(cfg, dataset_name, is_train=False)
        ret["task"] = get_dataset_info(dataset_name).task
        return ret

    def _map(self, record):
        image = self._read(record)
        if self.task == "semantic" and record.get("sem_seg_file_name"):
            # SemSegEvaluator reads this label itself; a value outside the vocabulary would
            # break its confusion matrix with an obscure error, so check it here, naming it.
            _read_semantic_label(record, image.shape, self.num_classes, self.ignore_label)
        aug = T.AugInput(image)
        self.augmentations(aug)
        return self._common(record, aug.image)


_TRAIN_MAPPERS = {"semantic": SemanticDatasetMapper, "panoptic": PanopticDatasetMapper,
                  "instance": InstanceDatasetMapper, "box": BoxDatasetMapper}


def build_train_mapper(cfg, dataset_name: str) -> _BaseMapper:
    """The train mapper of a dataset, chosen by its metadata task."""
    task = get_dataset_info(dataset_name).task
    return _TRAIN_MAPPERS[task](cfg, dataset_name, is_train=True)


def build_test_mapper(cfg, dataset_name: str) -> TestDatasetMapper:
    """The test mapper of a dataset (resize only)."""
    return TestDatasetMapper(cfg, dataset_name)
