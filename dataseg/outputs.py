"""Per-image prediction files and drawings, shared by ``demo/demo.py`` and the web demo.

Inputs are the Detectron2-format outputs of ``DaTaSegPredictor`` (or the model) and a
Detectron2 ``Metadata`` whose ``thing_classes``/``stuff_classes`` list all K classes (as
``DaTaSegPredictor.metadata`` does). Category ids in files are the dataset's category ids
(``stuff_dataset_id_to_contiguous_id`` inverted), or ``k + 1`` for contiguous id ``k`` when the
metadata has no id map.

Functions (pure, return arrays / dicts):

- ``semantic_label_map(sem_seg)``: (K, H, W) scores -> HxW uint8 (K <= 255) or uint16 labels.
- ``panoptic_to_coco(panoptic_seg, segments_info, metadata, file_name, image_id)``:
  -> (HxWx3 uint8 COCO panoptic PNG, RGB = id % 256, id // 256 % 256, id // 65536;
  the annotation dict {"image_id", "file_name", "segments_info": [{"id", "category_id",
  "iscrowd", "bbox" XYWH, "area", "isthing", "score"}]}).
- ``instances_to_coco_results(instances, image_id, metadata, score_threshold)``: COCO
  results list [{"image_id", "category_id", "bbox" XYWH, "score", "segmentation" RLE with
  str counts}], loadable with pycocotools ``COCO.loadRes``.
- ``coco_categories(metadata)``: [{"id", "name", "isthing", "supercategory"}].
- ``draw_predictions(image_rgb, predictions, metadata, confidence_threshold, scale)``: the
  Visualizer drawing (uint8 RGB, ``scale`` times the image size) of panoptic, semantic or
  instance outputs. ``scale=None`` (default) is ``draw_scale(h, w)``: 1, or for images whose
  shorter side is under ``DRAW_MIN_SIDE`` (384) px the integer upscale that brings it there
  (the longer side staying within ``DRAW_MAX_SIDE``, 2048 px). Why: Detectron2's Visualizer
  never draws a label smaller than 10 pt (about 14 px) at ``scale=1``, a tenth of a 128 px
  image; drawn at ``scale`` s its minimum becomes ``10 // s * s`` pt on an s-times larger
  canvas, so labels of small images keep about the proportion they have on 512 px ones.

``PredictionWriter(output_dir, metadata)`` writes one folder for one vocabulary (create a new
writer after changing the vocabulary); every file is written atomically:

- ``<stem>.jpg``: visualization (``scale`` times the image size, see ``draw_predictions``);
- ``<stem>_sem.png``: semantic label PNG (pixel value = contiguous class id), when the
  outputs have "sem_seg";
- ``panoptic/<stem>.png`` + ``panoptic.json`` (COCO panoptic: "images", "annotations",
  "categories"; loads with panopticapi), when they have "panoptic_seg";
- ``instances_results.json`` (COCO results) + ``coco_images.json`` (a COCO header: "images",
  "categories", empty "annotations"), so ``COCO("coco_images.json").loadRes(
  "instances_results.json")`` works, when they have "instances" (pycocotools' ``loadRes``
  refuses an empty list: a folder without any instance has ``[]``).

``write(stem, image_rgb, predictions)`` writes the per-image files and returns their paths;
the folder JSON files are rewritten after every image (a crash leaves valid JSON for the
images written so far); ``close()`` is kept for symmetry and writes them once more.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from dataseg.utils.atomic import atomic_write, atomic_write_bytes

__all__ = ["semantic_label_map", "panoptic_to_coco", "instances_to_coco_results",
           "coco_categories", "draw_predictions", "draw_scale", "PredictionWriter",
           "contiguous_to_dataset_id", "DRAW_MIN_SIDE", "DRAW_MAX_SIDE"]

DRAW_MIN_SIDE = 384  # automatic scale: smaller images are drawn upscaled to this shorter side
DRAW_MAX_SIDE = 2048  # ... unless the drawing's longer side would pass this


def contiguous_to_dataset_id(metadata) -> Dict[int, int]:
    """Contiguous class id -> dataset category id (``k + 1`` when the metadata has no map)."""
    stuff = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None)
    thing = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    mapping = {}
    for m in (thing, stuff):
        for dataset_id, k in (m or {}).items():
            mapping.setdefault(int(k), int(dataset_id))
    for k in range(len(metadata.stuff_classes)):
        mapping.setdefault(k, k + 1)
    return mapping


def _is_thing(metadata, k: int) -> bool:
    flags = getattr(metadata, "is_thing", None)
    return bool(flags[k]) if flags is not None else True


def coco_categories(metadata) -> List[dict]:
    """COCO "categories" of all K classes, in contiguous-id order."""
    ids = contiguous_to_dataset_id(metadata)
    return [{"id": ids[k], "name": name, "isthing": int(_is_thing(metadata, k)),
             "supercategory": "thing" if _is_thing(metadata, k) else "stuff"}
            for k, name in enumerate(metadata.stuff_classes)]


def semantic_label_map(sem_seg: torch.Tensor) -> np.ndarray:
    """(K, H, W) per-class scores -> HxW argmax labels, uint8 when K <= 255 else uint16."""
    labels = sem_seg.argmax(0).cpu().numpy()
    return labels.astype(np.uint8 if sem_seg.shape[0] <= 255 else np.uint16)


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def panoptic_to_coco(panoptic_seg: torch.Tensor, segments_info: List[dict], metadata,
                     file_name: str, image_id: Union[int, str]) -> Tuple[np.ndarray, dict]:
    """Model panoptic output -> (COCO panoptic RGB PNG array, COCO annotation dict)."""
    seg = panoptic_seg.cpu().numpy().astype(np.int64)
    ids = contiguous_to_dataset_id(metadata)
    infos = []
    for s in segments_info:
        mask = seg == int(s["id"])
        area = int(mask.sum())
        if area == 0:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        infos.append({"id": int(s["id"]), "category_id": ids[int(s["category_id"])],
                      "iscrowd": 0, "bbox": bbox, "area": area,
                      "isthing": int(bool(s.get("isthing", True))),
                      "score": float(s.get("score", 1.0))})
    return _id2rgb(seg), {"image_id": image_id, "file_name": file_name, "segments_info": infos}


def instances_to_coco_results(instances, image_id: Union[int, str], metadata,
                              score_threshold: float = 0.0) -> List[dict]:
    """Instances (pred_masks, pred_boxes, scores, pred_classes) -> COCO results with RLE."""
    instances = instances.to("cpu")
    keep = instances.scores >= score_threshold
    instances = instances[keep]
    ids = contiguous_to_dataset_id(metadata)
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS,
                            BoxMode.XYWH_ABS).tolist()
    results = []
    for k in range(len(instances)):
        result = {"image_id": image_id,
                  "category_id": ids[int(instances.pred_classes[k])],
                  "bbox": [float(v) for v in boxes[k]], "score": float(instances.scores[k])}
        if instances.has("pred_masks"):
            mask = np.asfortranarray(instances.pred_masks[k].numpy().astype(np.uint8))
            rle = mask_util.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            result["segmentation"] = rle
        results.append(result)
    return results


def draw_scale(height: int, width: int) -> int:
    """The automatic drawing scale: the smallest integer that brings the shorter side to at
    least ``DRAW_MIN_SIDE`` px, lowered so the longer side stays within ``DRAW_MAX_SIDE``;
    never below 1 (1 for images already large enough)."""
    short, long = min(height, width), max(height, width)
    up = -(-DRAW_MIN_SIDE // max(short, 1))
    return int(max(1, min(up, DRAW_MAX_SIDE // max(long, 1))))


def draw_predictions(image_rgb: np.ndarray, predictions: dict, metadata,
                     confidence_threshold: float = 0.5,
                     scale: Optional[float] = None) -> np.ndarray:
    """Detectron2 Visualizer drawing: panoptic segments when present, else instances with
    score >= ``confidence_threshold``, else the semantic argmax. ``scale``: the Visualizer's
    (the drawing is ``scale`` times the image size); None = ``draw_scale`` (see the module
    docstring). Returns (round(H * scale), round(W * scale), 3) uint8 RGB."""
    if scale is None:
        scale = draw_scale(*image_rgb.shape[:2])
    elif not scale > 0:
        raise ValueError(f"draw_predictions: scale must be > 0, got {scale}")
    vis = Visualizer(image_rgb, metadata, scale=float(scale), instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in predictions:
        seg, infos = predictions["panoptic_seg"]
        out = vis.draw_panoptic_seg(seg.cpu(), infos)
    elif "instances" in predictions:
        inst = predictions["instances"].to("cpu")
        out = vis.draw_instance_predictions(inst[inst.scores >= confidence_threshold])
    elif "sem_seg" in predictions:
        out = vis.draw_sem_seg(predictions["sem_seg"].argmax(0).cpu())
    else:
        raise KeyError(f"draw_predictions: no sem_seg, panoptic_seg or instances in "
                       f"{sorted(predictions)}")
    return out.get_image()


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))


class PredictionWriter:
    """Writes the prediction files of one output folder (see the module docstring).
    ``scale``: of the drawings, as ``draw_predictions`` (None: automatic)."""

    def __init__(self, output_dir: Union[str, Path], metadata,
                 confidence_threshold: float = 0.5, visualize: bool = True,
                 scale: Optional[float] = None):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metadata = metadata
        self.confidence_threshold = confidence_threshold
        self.visualize = visualize
        self.scale = scale
        self.images: List[dict] = []
        self.panoptic_annotations: List[dict] = []
        self.instance_results: List[dict] = []
        self._instances_seen = False

    def write(self, stem: str, image_rgb: np.ndarray, predictions: dict,
              image_id: Optional[int] = None, source: Optional[str] = None) -> List[Path]:
        """Writes the files of one image; returns their paths. ``stem``: output base name
        (unique within the folder); ``image_rgb``: the original HxWx3 uint8 RGB image;
        ``source``: the input file, the ``file_name`` of its COCO image entry (default
        ``<stem>.jpg``). The entry's height/width are the original's, which the masks and
        boxes refer to; a drawing upscaled by ``scale`` is named in ``"visualization"``."""
        image_id = len(self.images) + 1 if image_id is None else image_id
        h, w = image_rgb.shape[:2]
        entry = {"id": image_id, "file_name": str(source) if source else f"{stem}.jpg",
                 "height": h, "width": w}
        if self.visualize:
            entry["visualization"] = f"{stem}.jpg"
        self.images.append(entry)
        paths = []
        if self.visualize:
            vis = draw_predictions(image_rgb, predictions, self.metadata,
                                   self.confidence_threshold, self.scale)
            path = self.output_dir / f"{stem}.jpg"
            atomic_write(path, lambda tmp: Image.fromarray(vis).save(tmp, format="JPEG",
                                                                     quality=92))
            paths.append(path)
        if "sem_seg" in predictions:
            path = self.output_dir / f"{stem}_sem.png"
            _write_png(path, semantic_label_map(predictions["sem_seg"]))
            paths.append(path)
        if "panoptic_seg" in predictions:
            seg, infos = predictions["panoptic_seg"]
            png, ann = panoptic_to_coco(seg, infos, self.metadata, f"{stem}.png", image_id)
            path = self.output_dir / "panoptic" / f"{stem}.png"
            _write_png(path, png)
            self.panoptic_annotations.append(ann)
            paths.append(path)
        if "instances" in predictions:
            self._instances_seen = True
            self.instance_results += instances_to_coco_results(
                predictions["instances"], image_id, self.metadata)
        paths += self._write_folder_files()
        return paths

    def _write_folder_files(self) -> List[Path]:
        paths = []
        categories = coco_categories(self.metadata)
        if self.panoptic_annotations:
            path = self.output_dir / "panoptic.json"
            _write_json(path, {"images": self.images, "annotations": self.panoptic_annotations,
                               "categories": categories})
            paths.append(path)
        if self._instances_seen:
            for name, obj in (("instances_results.json", self.instance_results),
                              ("coco_images.json", {"images": self.images, "annotations": [],
                                                    "categories": categories})):
                _write_json(self.output_dir / name, obj)
                paths.append(self.output_dir / name)
        return paths

    def close(self) -> List[Path]:
        """Writes the folder JSON files (again); returns their paths."""
        return self._write_folder_files()
