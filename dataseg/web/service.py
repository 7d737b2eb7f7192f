"""What the web demo does for one request, independent of the web framework around it.

One ``SegmentationService`` owns one loaded model (``DaTaSegPredictor``) for the life of the
server. Requests are checked against ``Limits`` before any work starts (each failure is a
``RequestError`` with an HTTP status and a message meant for a person), then go through a
``Gate``: one runs, at most ``Limits.max_queue`` wait, any more are answered "busy" at once
instead of piling up. A request's vocabulary is a ``dataseg.vocabulary.Vocabulary`` (typed in
the one syntax of ``dataseg/vocabulary.py``, or a registered dataset's); the predictor answers
whether its text embeddings are at hand (the text cache says so itself), and a first-seen
vocabulary is embedded once (``embed``), which the page shows as a separate step.
"""
import base64
import io
import logging
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image, ImageOps, UnidentifiedImageError

from dataseg.data.dataset_info import get_dataset_info
from dataseg.outputs import PredictionWriter, draw_predictions
from dataseg.predictor import DaTaSegPredictor, stretch_to_uint8
from dataseg.vocabulary import Vocabulary, VocabularyError, parse_vocabulary

__all__ = ["WEB_TASKS", "Limits", "RequestError", "Gate", "SegmentationService",
           "decode_image", "list_vocabulary_datasets", "example_images_from_cfg"]

logger = logging.getLogger(__name__)

WEB_TASKS = ("semantic", "panoptic", "instance")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class RequestError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (command-line options of ``demo/web.py``)."""

    max_upload_bytes: int = 10 * 1024 * 1024   # a larger request body is refused (413)
    max_image_pixels: int = 40_000_000         # a larger image is refused before decoding (413)
    max_side: int = 1600                       # a longer image side is downscaled to this
    max_vocab_chars: int = 10_000              # a longer typed vocabulary is refused (400)
    max_classes: int = 300                     # a vocabulary with more classes is refused (400)
    max_queue: int = 1                         # requests that may wait behind the running one
    results_kept: int = 16                     # result downloads kept in memory (oldest dropped)


class Gate:
    """One job at a time; up to ``max_queue`` more wait their turn; beyond that, busy (503)."""

    def __init__(self, max_queue: int):
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = int(max_queue)
        self._count_lock = threading.Lock()
        self._running = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs admitted: the running one plus those waiting."""
        return self._pending

    @contextmanager
    def __call__(self):
        with self._count_lock:
            if self._pending > self.max_queue:
                waiting = f" and {self.max_queue} waiting" if self.max_queue else ""
                raise RequestError(503, f"busy: one image is being segmented{waiting}; "
                                        "try again in a few seconds")
            self._pending += 1
        try:
            with self._running:
                yield
        finally:
            with self._count_lock:
                self._pending -= 1


def _to_8bit(grey: np.ndarray) -> Image.Image:
    """High-bit-depth grey levels stretched to 0..255 (Pillow's own conversion clips them)."""
    return Image.fromarray(stretch_to_uint8(grey), mode="L")


def decode_image(data: bytes, filename: str, limits: Limits) -> Tuple[np.ndarray, Optional[list]]:
    """Upload bytes -> (RGB uint8 HxWx3, original [h, w] when downscaled else None).

    Refuses an empty or non-image upload (415), or one over ``max_image_pixels`` (413, checked
    from the header before decoding); downscales one whose longer side exceeds ``max_side``.
    """
    name = filename or "the upload"
    if not data:
        raise RequestError(400, f"'{name}' is empty: choose an image file")
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
    except Image.DecompressionBombError as e:  # Pillow's own limit, when ours is higher
        raise RequestError(413, f"'{name}' is too large to decode: {e}") from e
    except UnidentifiedImageError as e:
        raise RequestError(415, f"'{name}' is not an image that can be read (JPEG, PNG, BMP, "
                                "WebP, TIFF)") from e
    except (OSError, ValueError) as e:
        raise RequestError(415, f"'{name}' is not an image that can be read: {e}") from e
    if w * h > limits.max_image_pixels:
        raise RequestError(413, f"'{name}' is {w}x{h} pixels ({w * h / 1e6:.1f} MP); the limit "
                                f"is {limits.max_image_pixels / 1e6:.1f} MP")
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey levels
            image = _to_8bit(np.asarray(image, dtype=np.float64))
        image = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RequestError(415, f"'{name}' could not be decoded (truncated or corrupt?): "
                                f"{e}") from e
    resized_from = None
    if max(image.size) > limits.max_side:
        resized_from = [image.size[1], image.size[0]]
        scale = limits.max_side / max(image.size)
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy(), resized_from


def list_vocabulary_datasets() -> List[dict]:
    """Registered datasets whose metadata carries a DaTaSeg vocabulary (name, classes, task)."""
    found = []
    for name in sorted(DatasetCatalog.list()):
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "class_synonyms") or not hasattr(meta, "is_thing"):
            continue
        found.append({"name": name, "num_classes": len(meta.class_synonyms),
                      "task": getattr(meta, "task", None)})
    return found


def example_images_from_cfg(cfg, limit: int = 8) -> List[Path]:
    """Up to ``limit`` images of the config's test datasets that already exist on disk, taken
    in turn from each dataset (nothing is generated or downloaded; an absent dataset
    contributes none)."""
    per_dataset = []
    for name in cfg.DATASETS.TEST:
        root = MetadataCatalog.get(name).get("image_root", None) \
            if name in MetadataCatalog.list() else None
        if root and Path(root).is_dir():
            per_dataset.append(sorted(p for p in Path(root).iterdir()
                                      if p.suffix.lower() in IMAGE_SUFFIXES)[:limit])
    found: List[Path] = []
    for i in range(limit):
        for images in per_dataset:
            if i < len(images) and images[i] not in found and len(found) < limit:
                found.append(images[i])
    return found


def _segments(outputs: dict, task: str, vocab: Vocabulary, threshold: float) -> List[dict]:
    """The legend / JSON rows: id, label, score, area (pixels), isthing, for each segment."""
    names = vocab.class_names
    rows = []
    if task == "semantic":
        scores = outputs["sem_seg"].float()
        label_map = scores.argmax(0)
        share = scores / scores.sum(0, keepdim=True).clamp(min=1e-12)
        for k in torch.unique(label_map).tolist():
            pixels = label_map == k
            rows.append({"id": k + 1, "label": names[k], "category_id": k,
                         "score": round(float(share[k][pixels].mean()), 4),
                         "area": int(pixels.sum()), "isthing": bool(vocab.is_thing[k])})
    elif task == "panoptic":
        seg, infos = outputs["panoptic_seg"]
        areas = torch.bincount(seg.flatten().long().cpu(), minlength=1)
        for info in infos:
            k = int(info["category_id"])
            rows.append({"id": int(info["id"]), "label": names[k], "category_id": k,
                         "score": round(float(info.get("score", 1.0)), 4),
                         "area": int(areas[info["id"]]) if info["id"] < len(areas) else 0,
                         "isthing": bool(info.get("isthing", vocab.is_thing[k]))})
    else:
        inst = outputs["instances"]
        for i in range(len(inst)):
            score = float(inst.scores[i])
            if score < threshold:
                continue
            k = int(inst.pred_classes[i])
            rows.append({"id": i + 1, "label": names[k], "category_id": k,
                         "score": round(score, 4), "area": int(inst.pred_masks[i].sum()),
                         "isthing": bool(vocab.is_thing[k])})
    rows.sort(key=lambda r: -r["area"])
    return rows


def _class_color(metadata, k: int) -> Optional[List[int]]:
    """The class's colour in the metadata the Visualizer draws with (for the legend)."""
    colors = metadata.get("stuff_colors", None) if hasattr(metadata, "get") else None
    if colors is not None and k < len(colors):
        return [int(c) for c in colors[k]]
    return None


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


class SegmentationService:
    """One loaded model serving any vocabulary and any of the three tasks, one job at a time."""

    def __init__(self, cfg, limits: Optional[Limits] = None, confidence_threshold: float = 0.5,
                 examples: Sequence[Path] = (), modules_from: Optional[str] = None):
        self.cfg = cfg
        self.limits = limits = limits or Limits()
        self.confidence_threshold = float(confidence_threshold)
        self.examples = {p.name: Path(p) for p in examples}
        self.default_task = cfg.MODEL.DATASEG.TEST.TASK or "panoptic"
        if self.default_task not in WEB_TASKS:
            self.default_task = "panoptic"
        self.gate = Gate(limits.max_queue)
        self._results: OrderedDict[str, bytes] = OrderedDict()
        self._results_lock = threading.Lock()
        start = time.perf_counter()
        # modules_from: which dataset-specific (Table 5) copies serve typed vocabularies; the
        # placeholder vocabulary is never embedded (each request sets its own)
        self.predictor = DaTaSegPredictor(cfg, vocabulary=["object"], task=self.default_task,
                                          modules_from=modules_from, embed_now=False)
        self._current: Optional[Tuple[Vocabulary, str]] = None
        logger.info("model loaded in %.1f s (%s)", time.perf_counter() - start,
                    cfg.MODEL.WEIGHTS or "no weights")

    # ------------------------------------------------------------------ page data
    def info(self) -> dict:
        """What the page needs to build its controls."""
        lim = self.limits
        return {"tasks": list(WEB_TASKS), "default_task": self.default_task,
                "datasets": self._datasets(),
                "examples": sorted(self.examples),
                "limits": {"max_upload_mb": round(lim.max_upload_bytes / 2**20, 2),
                           "max_image_megapixels": round(lim.max_image_pixels / 1e6, 2),
                           "max_side": lim.max_side, "max_classes": lim.max_classes,
                           "max_vocab_chars": lim.max_vocab_chars},
                "confidence_threshold": self.confidence_threshold}

    def _datasets(self) -> List[dict]:
        """Registered vocabularies within the class limit, the config's datasets first."""
        own = list(self.cfg.DATASETS.TEST) + list(self.cfg.DATASETS.TRAIN)
        usable = [d for d in list_vocabulary_datasets()
                  if d["num_classes"] <= self.limits.max_classes]
        return sorted(usable, key=lambda d: (own.index(d["name"]) if d["name"] in own
                                             else len(own), d["name"]))

    def example_bytes(self, name: str) -> bytes:
        if name not in self.examples:
            raise RequestError(404, f"no example image '{name}'")
        return self.examples[name].read_bytes()

    # ------------------------------------------------------------------ vocabulary
    def vocabulary(self, vocab_text: Optional[str], dataset: Optional[str]) -> Vocabulary:
        """The request's vocabulary: typed text (``parse_vocabulary``) or a registered dataset's.

        Checked before any work: one of the two, not empty, within the size limits."""
        vocab_text = (vocab_text or "").strip()
        dataset = (dataset or "").strip()
        if vocab_text and dataset:
            raise RequestError(400, "give either a typed vocabulary ('vocab') or a dataset "
                                    "('dataset'), not both")
        if dataset:
            try:
                info = get_dataset_info(dataset)
            except KeyError:
                raise RequestError(400, f"unknown dataset '{dataset}': choose one of the "
                                        "registered datasets (GET /api/info lists them)") from None
            vocab = info.vocabulary
        else:
            if not vocab_text:
                raise RequestError(400, "empty vocabulary: type class names separated by ';' "
                                        "(e.g. 'cat; sofa|couch; grass:stuff'), or choose a "
                                        "dataset")
            if len(vocab_text) > self.limits.max_vocab_chars:
                raise RequestError(400, f"vocabulary too long: {len(vocab_text)} characters; the "
                                        f"limit is {self.limits.max_vocab_chars}")
            try:
                vocab = parse_vocabulary(vocab_text)
            except VocabularyError as e:
                raise RequestError(400, str(e)) from e
        if len(vocab.class_synonyms) > self.limits.max_classes:
            raise RequestError(400, f"vocabulary has {len(vocab.class_synonyms)} classes; the "
                                    f"limit is {self.limits.max_classes}")
        return vocab

    def is_cached(self, vocab: Vocabulary) -> bool:
        """True when the vocabulary's text embeddings need no text encoder (in use or on disk)."""
        if self._current is not None and self._current[0] == vocab:
            return True
        return self.predictor.is_embedded(vocab)

    def embed(self, vocab: Vocabulary) -> dict:
        """Embeds a first-seen vocabulary into the on-disk cache (no-op when cached)."""
        cached = self.is_cached(vocab)
        start = time.perf_counter()
        if not cached:
            with self.gate():
                self.predictor.embed(vocab)
        return {"classes": vocab.as_json(), "cached": cached,
                "seconds": round(time.perf_counter() - start, 3)}

    # ------------------------------------------------------------------ segmentation
    def _use(self, vocab: Vocabulary, task: str) -> None:
        if self._current == (vocab, task):
            return
        self.predictor.set_vocabulary(vocab, task=task)
        self._current = (vocab, task)

    def segment(self, data: bytes, filename: str, vocab: Vocabulary, task: str) -> dict:
        """Segments one uploaded image; returns the JSON answer of ``POST /segment``."""
        if task not in WEB_TASKS:
            raise RequestError(400, f"unknown task '{task}': choose one of {', '.join(WEB_TASKS)}")
        rgb, resized_from = decode_image(data, filename, self.limits)
        with self.gate():
            cached = self.is_cached(vocab)
            t0 = time.perf_counter()
            self._use(vocab, task)
            t1 = time.perf_counter()
            outputs = self.predictor(np.ascontiguousarray(rgb[:, :, ::-1]))
            t2 = time.perf_counter()
            metadata = self.predictor.metadata
        outputs = self._thresholded(outputs, task)
        segments = _segments(outputs, task, vocab, self.confidence_threshold)
        for row in segments:
            row["color"] = _class_color(metadata, row["category_id"])
        vis = draw_predictions(rgb, outputs, metadata, self.confidence_threshold)
        result_id = uuid.uuid4().hex[:16]
        self._keep(result_id, self._zip_files(rgb, outputs, metadata, filename, vis))
        t3 = time.perf_counter()
        logger.info("segmented %s (%dx%d, %s, %d classes): %d segments in %.2f s", filename,
                    rgb.shape[1], rgb.shape[0], task, len(vocab), len(segments), t3 - t0)
        return {"task": task,
                "image": {"height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                          "resized_from": resized_from},
                "vocabulary": {"source": vocab.dataset or "typed", "classes": vocab.as_json(),
                               "cached": cached},
                "segments": segments,
                "visualization_png_base64": base64.b64encode(_png_bytes(vis)).decode("ascii"),
                "download": f"/results/{result_id}.zip",
                "seconds": {"vocabulary": round(t1 - t0, 3), "model": round(t2 - t1, 3),
                            "total": round(t3 - t0, 3)}}

    def _thresholded(self, outputs: dict, task: str) -> dict:
        """Instance results below the confidence threshold are dropped (as demo/demo.py does
        for drawing), so legend, overlay and files show the same instances."""
        if task != "instance":
            return outputs
        inst = outputs["instances"]
        return dict(outputs, instances=inst[inst.scores >= self.confidence_threshold])

    def _zip_files(self, rgb, outputs, metadata, filename: str, vis: np.ndarray) -> bytes:
        """The files ``demo/demo.py`` writes for one image (``PredictionWriter``), zipped."""
        stem = Path(filename or "image").stem or "image"
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="dataseg_web_") as tmp:
            # the drawing is already made: the writer only adds the machine-readable files
            writer = PredictionWriter(tmp, metadata, self.confidence_threshold, visualize=False)
            writer.write(stem, rgb, outputs)
            writer.close()
            Image.fromarray(vis).save(Path(tmp) / f"{stem}.jpg", format="JPEG", quality=92)
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in sorted(Path(tmp).rglob("*")):
                    if p.is_file():
                        zf.write(p, p.relative_to(tmp).as_posix())
        return buf.getvalue()

    def _keep(self, result_id: str, data: bytes) -> None:
        with self._results_lock:
            self._results[result_id] = data
            while len(self._results) > self.limits.results_kept:
                self._results.popitem(last=False)

    def result_zip(self, result_id: str) -> bytes:
        with self._results_lock:
            data = self._results.get(result_id)
        if data is None:
            raise RequestError(404, f"result '{result_id}' is no longer kept (the server keeps "
                                    f"the last {self.limits.results_kept}); segment the image "
                                    "again")
        return data

