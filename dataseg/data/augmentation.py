"""The one augmentation builder every DaTaSeg mapper uses (no per-mapper copies).

Presets (per dataset: ``cfg.DATASETS.TRAIN_AUGMENTATIONS`` entry, else metadata "augmentation"):

* ``"lsj"``: flip + ``ResizeScale(INPUT.LSJ.MIN_SCALE..MAX_SCALE of the crop size)`` + fixed-size
  crop/pad to the crop size (COCO / Objects365 in Mask2Former).
* ``"resize_crop"``: ``ResizeShortestEdge(INPUT.RESIZE_CROP.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN,
  "choice")`` + random crop (category-area constrained for semantic data when
  ``SINGLE_CATEGORY_MAX_AREA < 1``) + flip (ADE20K in Mask2Former).
* ``"none"``: identity (pixel-exact tests).

Crop size: ``cfg.DATASETS.TRAIN_CROP_SIZES`` entry if > 0, else the preset's default.
Padded label pixels get the dataset's ignore label for semantic maps and 0 (= void) for
panoptic id maps; Detectron2 0.6's ``FixedSizeCrop`` pads labels with 0, which would be a real
class, hence :class:`FixedSizeCropWithSegPad`.
"""
from typing import List

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import PadTransform

from ..config import per_train_dataset
from .dataset_info import AUGMENTATION_PRESETS, get_dataset_info

__all__ = ["build_augmentations", "augmentation_preset", "crop_size_for", "seg_pad_value_for",
           "FixedSizeCropWithSegPad"]

PRESETS = AUGMENTATION_PRESETS  # the contract's presets (dataseg/contract.py)


class FixedSizeCropWithSegPad(T.Augmentation):
    """Random crop to ``crop_size`` (height, width) where the image is larger, then padding of the
    right and bottom up to it where it is smaller; segmentation maps are padded with
    ``seg_pad_value`` (images with ``pad_value``).

    The same crop and padding as Detectron2's ``T.FixedSizeCrop`` (one ``np.random.uniform``
    draw for the offset), written against the public ``T.Augmentation`` API: v0.6's class pads
    labels with 0, a real class, and has no argument for it.
    """

    def __init__(self, crop_size, pad: bool = True, pad_value: float = 128.0,
                 seg_pad_value: int = 255):
        super().__init__()
        self.crop_size = tuple(int(s) for s in crop_size)
        self.pad, self.pad_value, self.seg_pad_value = pad, pad_value, seg_pad_value

    def get_transform(self, image: np.ndarray) -> T.TransformList:
        in_h, in_w = image.shape[:2]
        out_h, out_w = self.crop_size
        fraction = np.random.uniform(0.0, 1.0)
        off_y, off_x = (int(round(max(size - out, 0) * fraction))
                        for size, out in ((in_h, out_h), (in_w, out_w)))
        transforms = [T.CropTransform(off_x, off_y, out_w, out_h, in_w, in_h)]
        if self.pad:
            kept_h, kept_w = min(in_h, out_h), min(in_w, out_w)
            transforms.append(PadTransform(0, 0, out_w - kept_w, out_h - kept_h, kept_w, kept_h,
                                           self.pad_value, self.seg_pad_value))
        return T.TransformList(transforms)


def _per_dataset_entry(cfg, key: str, dataset_name: str):
    """The entry of cfg.DATASETS.<key> at the dataset's index in cfg.DATASETS.TRAIN, or None."""
    train = list(cfg.DATASETS.TRAIN)
    values = per_train_dataset(cfg, key, None)
    return values[train.index(dataset_name)] if dataset_name in train else None


def augmentation_preset(cfg, dataset_name: str) -> str:
    """The train augmentation preset of a dataset (config override, else its metadata)."""
    preset = _per_dataset_entry(cfg, "TRAIN_AUGMENTATIONS", dataset_name) or \
        get_dataset_info(dataset_name).augmentation
    if preset not in PRESETS:
        raise ValueError(f"dataset '{dataset_name}': augmentation preset {preset!r} is not one of "
                         f"{PRESETS} (set metadata 'augmentation' or cfg.DATASETS."
                         "TRAIN_AUGMENTATIONS)")
    return preset


def crop_size_for(cfg, dataset_name: str, preset: str) -> int:
    """Square crop size of a dataset: config override if > 0, else the preset's default."""
    size = _per_dataset_entry(cfg, "TRAIN_CROP_SIZES", dataset_name)
    if size:
        return int(size)
    return int(cfg.INPUT.LSJ.IMAGE_SIZE if preset == "lsj" else cfg.INPUT.RESIZE_CROP.CROP_SIZE)


def seg_pad_value_for(dataset_name: str) -> int:
    """Label value for padded pixels: ignore for semantic maps, 0 (void) for panoptic ids."""
    info = get_dataset_info(dataset_name)
    return 0 if info.task == "panoptic" else info.ignore_label


def _flip(cfg) -> List[T.Augmentation]:
    mode = cfg.INPUT.RANDOM_FLIP
    if mode == "none":
        return []
    if mode not in ("horizontal", "vertical"):
        raise ValueError(f"cfg.INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', "
                         f"got {mode!r}")
    return [T.RandomFlip(horizontal=mode == "horizontal", vertical=mode == "vertical")]


def build_augmentations(cfg, dataset_name: str, is_train: bool) -> List[T.Augmentation]:
    """Returns the list of Detectron2 augmentations for one dataset (train or test)."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    preset = augmentation_preset(cfg, dataset_name)
    if preset == "none":
        return []
    size = crop_size_for(cfg, dataset_name, preset)
    pad = seg_pad_value_for(dataset_name)
    if preset == "lsj":
        lsj = cfg.INPUT.LSJ
        return _flip(cfg) + [
            T.ResizeScale(min_scale=lsj.MIN_SCALE, max_scale=lsj.MAX_SCALE,
                          target_height=size, target_width=size),
            FixedSizeCropWithSegPad(crop_size=(size, size), seg_pad_value=pad),
        ]
    rc = cfg.INPUT.RESIZE_CROP
    augs = [T.ResizeShortestEdge(list(rc.MIN_SIZE_TRAIN), rc.MAX_SIZE_TRAIN, "choice")]
    if rc.SINGLE_CATEGORY_MAX_AREA < 1.0 and get_dataset_info(dataset_name).task == "semantic":
        augs.append(T.RandomCrop_CategoryAreaConstraint("absolute", (size, size),
                                                        rc.SINGLE_CATEGORY_MAX_AREA, pad))
    else:
        augs.append(T.RandomCrop("absolute", (size, size)))
    return augs + _flip(cfg)
