"""Inference on single images with any vocabulary: ``DaTaSegPredictor`` and vocabulary parsing.

    from dataseg.engine import build_cfg
    from dataseg.predictor import DaTaSegPredictor

    cfg = build_cfg("configs/quickstart.yaml", ["MODEL.WEIGHTS", "model_final.pth"])
    predictor = DaTaSegPredictor(cfg, vocabulary=["cat", ["sofa", "couch"], "grass"],
                                 stuff=["grass"], task="panoptic")
    outputs = predictor(image_bgr)            # HxWx3 uint8, BGR as cv2.imread gives
    predictor.metadata                        # Detectron2 Metadata for Visualizer
    predictor.set_vocabulary("dog,tree:stuff")  # new vocabulary, same model (no rebuild)
    predictor.use_dataset("synth_pan_val")      # a registered dataset's vocabulary

Vocabulary text (``parse_vocabulary`` / ``load_vocabulary_file``), the format of the demo's
``--vocab`` and ``--vocab-file``:

- classes separated by ``,`` (a string) or one class a line (a file; blank lines and lines
  starting with ``#`` are skipped);
- synonyms of one class separated by ``|`` (the first is the display name);
- a class ending in ``:stuff`` is stuff (amorphous, one segment per class in panoptic output),
  ``:thing`` marks a thing explicitly; unmarked classes are things.

    "cat, sofa|couch, grass:stuff"   ->  [["cat"], ["sofa", "couch"], ["grass"]], stuff: grass

Names are embedded with the configured text encoder through the on-disk cache
(``dataseg.text.embed_vocabulary``): offline, and the encoder is loaded only on a cache miss.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model

from dataseg.contract import TASKS
from dataseg.data.dataset_info import get_dataset_info, visualizer_fields
from dataseg.engine.checkpoint import AtomicCheckpointer
from dataseg.modeling.dataset_specific import serve_with
from dataseg.modeling.meta_arch import default_vocabulary_from_cfg
from dataseg.text import embed_vocabulary, text_encoder_kwargs_from_cfg

__all__ = ["Vocabulary", "VocabularyError", "parse_vocabulary", "load_vocabulary_file",
           "as_vocabulary", "vocabulary_metadata", "DaTaSegPredictor", "predictor_from_args",
           "ImageReadError", "read_image", "stretch_to_uint8"]

STUFF_MARK, THING_MARK = "stuff", "thing"


class VocabularyError(ValueError):
    """A vocabulary that cannot be used (empty, empty names, duplicates, unknown mark)."""


@dataclass(frozen=True)
class Vocabulary:
    """Classes of a run-time vocabulary: synonyms per class (first = display name) and thing
    flags, in contiguous-id order."""

    class_synonyms: List[List[str]]
    is_thing: List[bool]

    @property
    def class_names(self) -> List[str]:
        return [s[0] for s in self.class_synonyms]

    def __len__(self) -> int:
        return len(self.class_synonyms)

    def key(self) -> str:
        """A short stable hash: the name this vocabulary is installed under in the model."""
        payload = json.dumps([self.class_synonyms, self.is_thing], ensure_ascii=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _parse_class(item: str, where: str):
    """'sofa | couch : stuff' -> (["sofa", "couch"], is_thing False)."""
    text, is_thing = item.strip(), True
    if ":" in text:
        text, _, mark = text.rpartition(":")
        mark = mark.strip().lower()
        if mark not in (STUFF_MARK, THING_MARK):
            raise VocabularyError(f"{where}: unknown mark ':{mark}' in {item.strip()!r} (use "
                                  f"':{STUFF_MARK}' or ':{THING_MARK}')")
        is_thing = mark == THING_MARK
    names = [n.strip() for n in text.split("|")]
    if not names or not all(names):
        raise VocabularyError(f"{where}: empty class name in {item.strip()!r}")
    return names, is_thing


def _build(items, where_of, source: str) -> Vocabulary:
    synonyms, things, seen = [], [], {}
    for i, item in items:
        names, thing = _parse_class(item, where_of(i))
        for n in names:
            if n.lower() in seen:
                raise VocabularyError(f"{where_of(i)}: name {n!r} already used by class "
                                      f"{seen[n.lower()]!r}")
            seen[n.lower()] = names[0]
        synonyms.append(names)
        things.append(thing)
    if not synonyms:
        raise VocabularyError(f"{source}: the vocabulary is empty (no class names)")
    return Vocabulary(synonyms, things)


def parse_vocabulary(text: str) -> Vocabulary:
    """``"cat, sofa|couch, grass:stuff"`` -> Vocabulary (see the module docstring)."""
    if not isinstance(text, str):
        raise VocabularyError(f"vocabulary text must be a str, got {type(text).__name__}")
    parts = text.split(",")
    if not text.strip():
        parts = []
    return _build(list(enumerate(parts)), lambda i: f"vocabulary item {i + 1}",
                  f"vocabulary {text!r}")


def load_vocabulary_file(path: Union[str, Path]) -> Vocabulary:
    """One class a line, ``|``-separated synonyms, optional ``:stuff``; ``#`` comments."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyError(f"vocabulary file {path}: cannot be read ({e})") from e
    items = [(i, line) for i, line in enumerate(lines)
             if line.strip() and not line.strip().startswith("#")]
    return _build(items, lambda i: f"{path}:{i + 1}", f"vocabulary file {path}")


def as_vocabulary(vocabulary, stuff: Optional[Sequence[str]] = None) -> Vocabulary:
    """A Vocabulary from a Vocabulary, a vocabulary string, or a list whose items are a name,
    a list of synonyms, or a ``"a|b:stuff"`` string. ``stuff``: names (any synonym) to mark
    as stuff in addition to ``:stuff`` marks; a name that is no class is an error."""
    if isinstance(vocabulary, Vocabulary):
        vocab = vocabulary
    elif isinstance(vocabulary, str):
        vocab = parse_vocabulary(vocabulary)
    elif isinstance(vocabulary, Sequence):
        items = [(i, v if isinstance(v, str) else "|".join(str(n) for n in v))
                 for i, v in enumerate(vocabulary)]
        bad = [v for _, v in items if "," in v]
        if bad:
            raise VocabularyError(f"vocabulary list item {bad[0]!r} contains ','; give one "
                                  "class per list item")
        vocab = _build(items, lambda i: f"vocabulary[{i}]", "vocabulary list")
    else:
        raise VocabularyError("vocabulary must be a str, a list of names / synonym lists, or a "
                              f"Vocabulary; got {type(vocabulary).__name__}")
    if stuff:
        lookup = {n.lower(): k for k, syns in enumerate(vocab.class_synonyms) for n in syns}
        things = list(vocab.is_thing)
        for name in stuff:
            if str(name).strip().lower() not in lookup:
                raise VocabularyError(f"stuff name {name!r} is not a class of the vocabulary "
                                      f"{vocab.class_names}")
            things[lookup[str(name).strip().lower()]] = False
        vocab = Vocabulary(vocab.class_synonyms, things)
    return vocab


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
        vocabulary: classes to segment (see ``as_vocabulary``); when None, the registered
            dataset ``dataset`` (default MODEL.DATASEG.TEST.VOCABULARY, else the first of
            DATASETS.TEST) is used.
        stuff: names of ``vocabulary`` that are stuff.
        task: "semantic", "panoptic", "instance" or "box" (box returns instances); default
            MODEL.DATASEG.TEST.TASK, else the dataset's task, else "panoptic" for a vocabulary.
        model: an already built DaTaSeg model to reuse (weights are not reloaded).
        modules_from: for a model with dataset-specific (Table 5) modules
            (MODEL.DATASEG.DATASET_SPECIFIC): the dataset whose copies serve a vocabulary
            the model does not know (required then; ignored for a shared model).

    Attributes: ``model``, ``metadata`` (Detectron2 Metadata for Visualizer and the output
    writers), ``vocabulary`` (Vocabulary), ``task``, ``vocabulary_name`` (the name the model
    knows the current vocabulary by), ``input_format``.
    """

    def __init__(self, cfg, vocabulary=None, stuff: Optional[Sequence[str]] = None,
                 task: Optional[str] = None, dataset: Optional[str] = None, model=None,
                 modules_from: Optional[str] = None):
        self.cfg = cfg.clone()
        self.modules_from = modules_from
        self.cfg.freeze()
        # validate the vocabulary before the (slow) model build
        if vocabulary is not None:
            vocabulary = as_vocabulary(vocabulary, stuff)
            stuff = None
        elif dataset:
            get_dataset_info(dataset)
        if model is None:
            model = build_model(self.cfg)
            if self.cfg.MODEL.WEIGHTS:
                AtomicCheckpointer(model).load(self.cfg.MODEL.WEIGHTS)
        self.model = model.eval()
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST],
                                        cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r}: DaTaSegPredictor takes RGB "
                             "or BGR")
        self._text_kwargs = text_encoder_kwargs_from_cfg(self.cfg)
        if vocabulary is not None:
            if dataset:
                raise ValueError("DaTaSegPredictor: give vocabulary or dataset, not both")
            self.set_vocabulary(vocabulary, stuff=stuff, task=task)
        else:
            if stuff:
                raise ValueError("DaTaSegPredictor: stuff= needs vocabulary=")
            name = dataset or default_vocabulary_from_cfg(self.cfg)
            if not name:
                raise KeyError("DaTaSegPredictor: no vocabulary: pass vocabulary=, dataset=, "
                               "or set MODEL.DATASEG.TEST.VOCABULARY / DATASETS.TEST")
            self.use_dataset(name, task=task)

    def _pick_task(self, task: Optional[str], default: str) -> str:
        task = task or self.cfg.MODEL.DATASEG.TEST.TASK or default
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        return task

    def set_vocabulary(self, vocabulary, stuff: Optional[Sequence[str]] = None,
                       task: Optional[str] = None) -> None:
        """Switches to a new vocabulary (embedded via the text cache; the model is kept)."""
        vocab = as_vocabulary(vocabulary, stuff)
        task = self._pick_task(task, "panoptic")
        emb = embed_vocabulary(vocab.class_synonyms, **self._text_kwargs)
        name = f"dataseg_predictor_{vocab.key()}"
        serve_with(self.model, name, self.modules_from, _MODULES_FROM)
        self.model.set_vocabulary(name, emb, vocab.is_thing, task=task)
        self.vocabulary, self.vocabulary_name, self.task = vocab, name, task
        self.metadata = vocabulary_metadata(vocab, name)

    def use_dataset(self, name: str, task: Optional[str] = None) -> None:
        """Switches to a registered dataset's vocabulary (KeyError naming an unknown one)."""
        info = get_dataset_info(name)
        self.vocabulary = Vocabulary(info.class_synonyms, info.is_thing)
        self.task = self._pick_task(task, info.task)
        self.vocabulary_name = name
        if self.modules_from is not None:
            serve_with(self.model, name, self.modules_from, _MODULES_FROM)
        self.model.vocabulary.get(name)  # embeds now, so errors surface here
        meta = MetadataCatalog.get(name).as_dict()
        meta.update(visualizer_fields(info.class_names), name=name,
                    class_synonyms=info.class_synonyms, is_thing=info.is_thing)
        self.metadata = Metadata(**meta)

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
    ``vocab`` (text), ``vocab_file`` (path) and ``dataset`` (registered name); none = the
    config's default vocabulary. Raises VocabularyError / KeyError with a one-line message."""
    given = [n for n, v in (("--vocab", vocab), ("--vocab-file", vocab_file),
                            ("--dataset", dataset)) if v is not None]
    if len(given) > 1:
        raise VocabularyError(f"give only one of {', '.join(given)}")
    if vocab is not None:
        return DaTaSegPredictor(cfg, vocabulary=parse_vocabulary(vocab), task=task, model=model,
                                modules_from=modules_from)
    if vocab_file is not None:
        return DaTaSegPredictor(cfg, vocabulary=load_vocabulary_file(vocab_file), task=task,
                                model=model, modules_from=modules_from)
    return DaTaSegPredictor(cfg, dataset=dataset, task=task, model=model,
                            modules_from=modules_from)
