"""Inference on single images with any vocabulary: ``DaTaSegPredictor``.

    from dataseg.engine import build_cfg
    from dataseg.predictor import DaTaSegPredictor

    cfg = build_cfg("configs/quickstart.yaml", ["MODEL.WEIGHTS", "model_final.pth"])
    predictor = DaTaSegPredictor(cfg, vocabulary=["cat", ["sofa", "couch"], "grass"],
                                 stuff=["grass"], task="panoptic")
    outputs = predictor(image_bgr)            # HxWx3 uint8, BGR as cv2.imread gives
    predictor.metadata                        # Detectron2 Metadata for Visualizer
    predictor.set_vocabulary("dog; tree:stuff")  # new vocabulary, same model (no rebuild)
    predictor.use_dataset("synth_pan_val")      # a registered dataset's vocabulary

A vocabulary is a ``dataseg.vocabulary.Vocabulary``, typed text or a list of classes, in the one
syntax of ``dataseg/vocabulary.py`` (re-exported here: ``Vocabulary``, ``VocabularyError``,
``parse_vocabulary``, ``read_vocabulary``, ``as_vocabulary``). Names are embedded by the model's
vocabulary bank through the on-disk text cache: offline, and the text encoder is loaded only
for a vocabulary the cache does not hold.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model

from dataseg.config import default_vocabulary_from_cfg
from dataseg.contract import TASKS
from dataseg.data.dataset_info import get_dataset_info, visualizer_fields
from dataseg.engine.checkpoint import AtomicCheckpointer
from dataseg.engine.defaults import setup_datasets
from dataseg.modeling.dataset_specific import serve_with
from dataseg.vocabulary import (
    Vocabulary,
    VocabularyError,
    as_vocabulary,
    parse_vocabulary,
    read_vocabulary,
)

__all__ = ["Vocabulary", "VocabularyError", "parse_vocabulary", "read_vocabulary",
           "as_vocabulary", "vocabulary_metadata", "DaTaSegPredictor", "predictor_from_args",
           "ImageReadError", "read_image", "stretch_to_uint8"]


def vocabulary_metadata(vocab: Vocabulary, name: str) -> Metadata:
    """Detectron2 Metadata (not registered in MetadataCatalog) for a run-time vocabulary:
    what ``Visualizer`` reads (see ``visualizer_fields``) plus ``class_synonyms``/``is_thing``
    and the identity id maps used by ``dataseg.outputs`` for COCO category ids (k + 1)."""
    ids = {k + 1: k for k in range(len(vocab))}
    return Metadata(name=name, class_synonyms=[list(s) for s in vocab.class_synonyms],
                    is_thing=list(vocab.is_thing), **visualizer_fields(vocab.class_names),
                    thing_dataset_id_to_contiguous_id={
                        i: k for i, k in ids.items() if vocab.is_thing[k]},
                    stuff_dataset_id_to_contiguous_id=ids)


# how errors about a dataset-specific model's missing module choice name the option
_MODULES_FROM = "modules_from= (demo: --modules-from)"


class DaTaSegPredictor:
    """Like ``detectron2.engine.DefaultPredictor``, with a vocabulary chosen at run time.

    Args:
        cfg: a config from ``dataseg.engine.build_cfg`` (``MODEL.WEIGHTS`` loaded if set).
        vocabulary: classes to segment (a ``Vocabulary``, typed text or a list of classes: see
            ``dataseg/vocabulary.py``); when None, the registered dataset ``dataset``, else
            the config's (``dataseg.config.default_vocabulary_from_cfg``: MODEL.DATASEG.TEST.
            VOCABULARY_DATASET / _FILE / _CLASSES, else the first of DATASETS.TEST).
        stuff: names of ``vocabulary`` that are stuff.
        task: "semantic", "panoptic", "instance" or "box" (box returns instances); default
            MODEL.DATASEG.TEST.TASK, else the dataset's task, else "panoptic" for a vocabulary.
        dataset: a registered dataset whose vocabulary to use (not with ``vocabulary``).
        model: an already built DaTaSeg model to reuse (weights are not reloaded).
        modules_from: for a model with dataset-specific (Table 5) modules
            (MODEL.DATASEG.DATASET_SPECIFIC): the dataset whose copies serve a vocabulary
            the model does not know (required then; ignored for a shared model).
        embed_now: False defers embedding the first vocabulary to the first image (the web
            demo, which switches vocabulary per request).

    Attributes: ``model``, ``load_report`` (``dataseg.engine.checkpoint.LoadReport``: what
    MODEL.WEIGHTS loaded, its ``summary()`` the line the command lines print), ``metadata``
    (Detectron2 Metadata for Visualizer and the output writers), ``vocabulary``
    (Vocabulary), ``task``, ``vocabulary_name`` (the name the model knows the current
    vocabulary by), ``input_format``.
    """

    def __init__(self, cfg, vocabulary=None, stuff: Optional[Sequence[str]] = None,
                 task: Optional[str] = None, dataset: Optional[str] = None, model=None,
                 modules_from: Optional[str] = None, embed_now: bool = True):
        self.cfg = cfg.clone()
        self.modules_from = modules_from
        self.cfg.defrost()
        # the datasets the config declares (DATASETS.REGISTER files, the synthetic world),
        # registered as train_net.py registers them: a run's config.yaml is enough here
        setup_datasets(self.cfg, generate=False)
        self.cfg.freeze()
        # validate the vocabulary before the (slow) model build
        if vocabulary is not None:
            if dataset:
                raise ValueError("DaTaSegPredictor: give vocabulary or dataset, not both")
            vocabulary = as_vocabulary(vocabulary, stuff)
        elif stuff:
            raise ValueError("DaTaSegPredictor: stuff= needs vocabulary=")
        else:
            vocabulary = dataset or default_vocabulary_from_cfg(self.cfg)
            if not vocabulary:
                raise KeyError("DaTaSegPredictor: no vocabulary: pass vocabulary=, dataset=, "
                               "or set MODEL.DATASEG.TEST.VOCABULARY_DATASET (_FILE, _CLASSES)"
                               " / DATASETS.TEST")
            if isinstance(vocabulary, str):
                get_dataset_info(vocabulary)
        self.load_report = None  # what MODEL.WEIGHTS loaded (None: a model was given)
        if model is None:
            model = build_model(self.cfg)
            checkpointer = AtomicCheckpointer.from_cfg(model, self.cfg)
            checkpointer.load(self.cfg.MODEL.WEIGHTS)
            self.load_report = checkpointer.load_report
        self.model = model.eval()
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST],
                                        cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r}: DaTaSegPredictor takes RGB "
                             "or BGR")
        if isinstance(vocabulary, Vocabulary):
            self.set_vocabulary(vocabulary, task=task, embed_now=embed_now)
        else:
            self.use_dataset(vocabulary, task=task, embed_now=embed_now)

    def _pick_task(self, task: Optional[str], default: str) -> str:
        task = task or self.cfg.MODEL.DATASEG.TEST.TASK or default
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        return task

    def set_vocabulary(self, vocabulary, stuff: Optional[Sequence[str]] = None,
                       task: Optional[str] = None, embed_now: bool = True) -> None:
        """Switches to a new vocabulary (embedded via the text cache; the model is kept)."""
        vocab = as_vocabulary(vocabulary, stuff)
        if vocab.dataset is not None and not stuff:
            return self.use_dataset(vocab.dataset, task=task, embed_now=embed_now)
        task = self._pick_task(task, "panoptic")
        name = f"dataseg_predictor_{vocab.key}"
        serve_with(self.model, name, self.modules_from, _MODULES_FROM)
        self.model.vocabulary.add(name, vocab, task=task)
        if embed_now:
            self.model.vocabulary.get(name)  # embeds now, so errors surface here
        self.vocabulary, self.vocabulary_name, self.task = vocab, name, task
        self.metadata = vocabulary_metadata(vocab, name)
        return None

    def use_dataset(self, name: str, task: Optional[str] = None, embed_now: bool = True) -> None:
        """Switches to a registered dataset's vocabulary (KeyError naming an unknown one)."""
        info = get_dataset_info(name)
        self.vocabulary = info.vocabulary
        self.task = self._pick_task(task, info.task)
        self.vocabulary_name = name
        if self.modules_from is not None:
            serve_with(self.model, name, self.modules_from, _MODULES_FROM)
        if embed_now:
            self.model.vocabulary.get(name)  # embeds now, so errors surface here
        meta = MetadataCatalog.get(name).as_dict()
        meta.update(visualizer_fields(info.class_names), name=name,
                    class_synonyms=info.class_synonyms, is_thing=info.is_thing)
        self.metadata = Metadata(**meta)

    def is_embedded(self, vocabulary) -> bool:
        """True when switching to ``vocabulary`` needs no text encoder (see
        ``VocabularyBank.is_embedded``)."""
        return self.model.vocabulary.is_embedded(as_vocabulary(vocabulary))

    def embed(self, vocabulary) -> None:
        """Embeds ``vocabulary`` into the text cache (the encoder loads only on a cache miss)."""
        self.model.vocabulary.embedder(as_vocabulary(vocabulary))

    def preprocess(self, original_image: np.ndarray) -> dict:
        """HxWx3 uint8 image in BGR (as cv2.imread) -> the model input dict."""
        if not isinstance(original_image, np.ndarray) or original_image.ndim != 3 or \
                original_image.shape[2] != 3:
            raise ValueError("DaTaSegPredictor expects an HxWx3 uint8 BGR array, got "
                             f"{getattr(original_image, 'shape', type(original_image))}")
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": image, "height": height, "width": width,
                "dataset_name": self.vocabulary_name, "task": self.task}

    def __call__(self, original_image: np.ndarray) -> dict:
        """One BGR image -> Detectron2-format outputs: {"sem_seg"}, {"panoptic_seg",
        "sem_seg"} or {"instances"} at the image's original size (contiguous class ids index
        ``self.metadata.thing_classes`` / ``stuff_classes``)."""
        with torch.no_grad():
            return self.model([self.preprocess(original_image)])[0]


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names it (one line)."""


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Levels of more than 8 bits (any shape) stretched from their min..max to 0..255 uint8
    (a constant image gives zeros; NaNs give 0)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0).round().clip(
        0, 255).astype(np.uint8)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image file -> HxWx3 uint8 BGR, what ``DaTaSegPredictor`` takes (the reader of
    demo/demo.py and tools/export_model.py).

    8-bit files read as ``cv2.imread(path, cv2.IMREAD_COLOR)`` does (EXIF orientation applied;
    grey, grey + alpha, RGBA, palette and CMYK converted to BGR, alpha dropped). Files with
    more bits per channel (16-bit PNG / TIFF, float TIFF) are stretched from their min..max to
    0..255 (``stretch_to_uint8``, as the web demo does) instead of cut to their top byte,
    which leaves 10- or 12-bit data nearly black. Raises ``ImageReadError`` naming the file.
    """
    path = str(path)
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise ImageReadError(f"{path}: cannot be read as an image")
    if raw.dtype == np.uint8:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ImageReadError(f"{path}: cannot be read as an image")
        return image
    if raw.ndim == 3 and raw.shape[2] in (2, 4):  # grey + alpha, BGRA: drop the alpha
        raw = raw[..., :-1]
    if raw.ndim == 2 or raw.shape[2] == 1:
        raw = np.repeat(raw.reshape(raw.shape[0], raw.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(stretch_to_uint8(raw))


def predictor_from_args(cfg, vocab: Optional[str] = None, vocab_file: Optional[str] = None,
                        dataset: Optional[str] = None, task: Optional[str] = None,
                        model=None, modules_from: Optional[str] = None) -> DaTaSegPredictor:
    """The vocabulary options of demo/demo.py and tools/export_model.py: at most one of
    ``vocab`` (typed text), ``vocab_file`` (path) and ``dataset`` (registered name); none = the
    config's default vocabulary. Raises VocabularyError / KeyError with a one-line message."""
    given = [n for n, v in (("--vocab", vocab), ("--vocab-file", vocab_file),
                            ("--dataset", dataset)) if v is not None]
    if len(given) > 1:
        raise VocabularyError(f"give only one of {', '.join(given)}")
    vocabulary = None
    if vocab is not None:
        vocabulary = parse_vocabulary(vocab, where=f"--vocab {vocab.strip()!r}")
    elif vocab_file is not None:
        vocabulary = read_vocabulary(vocab_file)
    return DaTaSegPredictor(cfg, vocabulary=vocabulary, dataset=dataset, task=task, model=model,
                            modules_from=modules_from)
