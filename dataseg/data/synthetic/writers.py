"""Turns rendered scenes into the real datasets' on-disk formats.

ADE-style semantic PNGs (value i = contiguous class i, 255 = ignore), COCO panoptic PNG + json
(ids via panopticapi's id2rgb, void = 0), and COCO detection json with RLE masks or boxes only
(Objects365-like). Everything is written in a fixed order so output is byte-identical per seed.
"""
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image
from pycocotools import mask as mask_utils

from .scene import Scene, tight_box
from .vocabulary import KIND_INDEX, KINDS, DomainVocabulary

JPEG_QUALITY = 92


def save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


def kind_to_class_lut(vocab: DomainVocabulary) -> np.ndarray:
    """World-kind index -> contiguous class id (255 for kinds outside the vocabulary)."""
    lut = np.full(len(KINDS), 255, np.uint8)
    for i, kind in enumerate(vocab.kinds):
        lut[KIND_INDEX[kind]] = i
    return lut


def save_semantic(scene: Scene, vocab: DomainVocabulary, path: Path) -> None:
    kinds = scene.kind_map()
    label = np.where(kinds >= 0, kind_to_class_lut(vocab)[np.clip(kinds, 0, None)], 255)
    Image.fromarray(label.astype(np.uint8)).save(path, format="PNG")


def panoptic_segments(scene: Scene, vocab: DomainVocabulary):
    """(id map HxW int32, segments_info): one segment per thing instance and per stuff class."""
    index = vocab.index_of_kind()
    cat_ids = vocab.category_ids()
    ids = np.zeros(scene.void.shape, np.int32)
    segments: List[Dict] = []

    def add(mask, kind):
        if kind not in index or not mask.any():
            return
        seg_id = len(segments) + 1
        ids[mask] = seg_id
        segments.append({"id": seg_id, "category_id": cat_ids[index[kind]], "iscrowd": 0,
                         "bbox": list(tight_box(mask)), "area": int(mask.sum())})

    covered = scene.void.copy()
    for inst in scene.instances:
        covered |= inst.mask
    for kind_idx in np.unique(scene.stuff_map):
        add((scene.stuff_map == kind_idx) & ~covered, KINDS[int(kind_idx)].key)
    for inst in scene.instances:
        add(inst.mask, inst.kind)
    return ids, segments


def save_panoptic(scene: Scene, vocab: DomainVocabulary, path: Path) -> List[Dict]:
    ids, segments = panoptic_segments(scene, vocab)
    Image.fromarray(id2rgb(ids).astype(np.uint8)).save(path, format="PNG")
    return segments


def coco_annotations(scene: Scene, vocab: DomainVocabulary, image_id: int, first_ann_id: int,
                     with_masks: bool) -> List[Dict]:
    """COCO annotations of the scene's things in the vocabulary (RLE masks if ``with_masks``)."""
    index = vocab.index_of_kind()
    cat_ids = vocab.category_ids()
    anns = []
    for inst in scene.instances:
        if inst.kind not in index:
            continue
        x, y, w, h = tight_box(inst.mask)
        ann = {"id": first_ann_id + len(anns), "image_id": image_id,
               "category_id": cat_ids[index[inst.kind]], "bbox": [x, y, w, h], "iscrowd": 0}
        if with_masks:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            ann["segmentation"] = {"size": [int(s) for s in rle["size"]],
                                   "counts": rle["counts"].decode("ascii")}
            ann["area"] = int(inst.mask.sum())
        else:  # boxes only, as Objects365: area is the box area
            ann["area"] = w * h
        anns.append(ann)
    return anns


def coco_categories(vocab: DomainVocabulary, things_only: bool) -> List[Dict]:
    return [{"id": c["id"], "name": c["name"], "isthing": c["isthing"],
             "supercategory": "thing" if c["isthing"] else "stuff"}
            for c in vocab.categories() if c["isthing"] or not things_only]


def write_json(obj, path: Path) -> None:
    Path(path).write_text(json.dumps(obj, separators=(",", ":")))
