"""Registers the real datasets DaTaSeg trains and evaluates on, under ``$DETECTRON2_DATASETS``.

``register_all_builtin(root)`` records paths only: no dataset file is opened, so importing
``dataseg`` is cheap and works before any data is downloaded; a missing dataset fails when it
is loaded, naming the missing path. The on-disk layout follows Detectron2/Mask2Former, so data
prepared for them is reused; ``datasets/README.md`` says how to prepare each dataset.

Vocabularies (category names, synonyms, thing/stuff) ship as json in ``vocabularies/``.
"""
import functools
import json
import logging
import os
from pathlib import Path
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..vocabulary import VocabularyError, read_vocabulary, vocabulary_from_categories
from .register import (
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)

logger = logging.getLogger(__name__)

VOCABULARY_DIR = Path(__file__).resolve().parent / "vocabularies"
VOCABULARIES = ("ade20k_150", "coco_panoptic_133", "objects365_v2", "cityscapes_19",
                "pascal_context_59", "pascal_voc_20")
# Written by datasets/prepare_pascal_context.py from the dataset's own labels file.
PASCAL_CONTEXT_459_NAMES = "pascal_ctx_d2/labels_459.txt"
# Pascal Context 459 labels exceed 8 bits: 16-bit PNGs, this value is ignored.
PASCAL_CONTEXT_459_IGNORE = 65535
PASCAL_CONTEXT_459_CLASSES = 459


@functools.cache
def _read_vocabulary(name: str) -> tuple:
    path = VOCABULARY_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary '{name}' not found: {path} "
                                f"(known: {', '.join(VOCABULARIES)})")
    try:
        cats = json.loads(path.read_text())["categories"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a vocabulary json with a 'categories' list ({e})") from e
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or not {"id", "name", "isthing"} <= set(c):
            raise ValueError(f"{path}: categories[{k}] needs keys 'id', 'name', 'isthing'")
    vocabulary_from_categories(cats, str(path))  # names and duplicates: the one rule
    return tuple(json.dumps(c) for c in cats)


def load_vocabulary(name: str) -> List[dict]:
    """The categories of a builtin vocabulary: ``[{"id", "name", "isthing", "synonyms"}, ...]``."""
    return [json.loads(c) for c in _read_vocabulary(name)]


def class_synonyms(categories: List[dict]) -> List[List[str]]:
    return [[c["name"]] + list(c.get("synonyms", [])) for c in categories]


def default_root(root: Optional[str] = None) -> Path:
    """``root``, else ``$DETECTRON2_DATASETS``, else ``datasets`` (relative, as Detectron2)."""
    return Path(root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _ade(root: Path):
    ade = root / "ADEChallengeData2016"
    cats = load_vocabulary("ade20k_150")
    names = class_synonyms(cats)
    thing = [bool(c["isthing"]) for c in cats]
    for split, d2split in (("train", "training"), ("val", "validation")):
        # The thing/stuff split is known (ADE panoptic), so semantic ADE carries it too.
        register_semantic_dataset(
            f"dataseg_ade20k_sem_seg_{split}", ade / "images" / d2split,
            ade / "annotations_detectron2" / d2split, names, is_thing=thing,
            augmentation="resize_crop")
    # Panoptic ids = semantic label values 0..149 (as in Mask2Former's ade20k_panoptic_val.json).
    pan_cats = [dict(c, id=k) for k, c in enumerate(cats)]
    assert [c["isthing"] for c in pan_cats] == [int(t) for t in thing]
    register_panoptic_dataset(
        "dataseg_ade20k_panoptic_val", ade / "images" / "validation", ade / "ade20k_panoptic_val",
        ade / "ade20k_panoptic_val.json", pan_cats,
        sem_seg_root=ade / "annotations_detectron2" / "validation", augmentation="resize_crop")


def _coco(root: Path):
    coco = root / "coco"
    cats = load_vocabulary("coco_panoptic_133")
    for split in ("train", "val"):
        register_panoptic_dataset(
            f"dataseg_coco_2017_{split}_panoptic", coco / f"{split}2017",
            coco / f"panoptic_{split}2017", coco / "annotations" / f"panoptic_{split}2017.json",
            cats, sem_seg_root=coco / f"panoptic_semseg_{split}2017", augmentation="lsj")
    register_semantic_dataset(
        "dataseg_coco_2017_val_sem_seg", coco / "val2017", coco / "panoptic_semseg_val2017",
        class_synonyms(cats), is_thing=[bool(c["isthing"]) for c in cats], augmentation="lsj")


def _objects365(root: Path):
    o365 = root / "objects365"
    cats = load_vocabulary("objects365_v2")
    for split in ("train", "val"):
        register_box_dataset(
            f"dataseg_objects365_v2_{split}_box", o365 / "images" / split,
            o365 / "annotations" / f"zhiyuan_objv2_{split}.json", cats, augmentation="lsj")
    # The DaTaSeg O365 instance benchmark, normalised by datasets/prepare_objects365.py so that
    # skipped (unlabelled) objects are iscrowd=1 regions, which COCO evaluation ignores.
    register_instance_dataset(
        "dataseg_o365_instance_seg_val", o365 / "images" / "val",
        o365 / "annotations" / "o365_instance_seg_val_d2.json", cats, augmentation="lsj",
        source_json_file=str(o365 / "annotations" / "o365_instance_seg_val.json"))


def _cityscapes(root: Path):
    city = root / "cityscapes"
    cats = load_vocabulary("cityscapes_19")
    register_panoptic_dataset(
        "dataseg_cityscapes_panoptic_val", city / "leftImg8bit" / "val",
        city / "gtFine" / "cityscapes_panoptic_val",
        city / "gtFine" / "cityscapes_panoptic_val.json",
        [{k: c[k] for k in ("id", "name", "isthing", "synonyms")} for c in cats],
        augmentation="lsj")


def _pascal(root: Path):
    ctx = root / "pascal_ctx_d2"
    register_semantic_dataset(
        "dataseg_pascal_context_59_val", ctx / "images" / "validation",
        ctx / "annotations_ctx59" / "validation",
        class_synonyms(load_vocabulary("pascal_context_59")), augmentation="resize_crop")
    _pascal_context_459(root)
    voc = root / "pascal_voc_d2"
    voc_cats = load_vocabulary("pascal_voc_20")
    register_semantic_dataset(
        "dataseg_pascal_voc_2012_val", voc / "images" / "validation",
        voc / "annotations_pascal20" / "validation", class_synonyms(voc_cats),
        is_thing=[bool(c["isthing"]) for c in voc_cats], augmentation="resize_crop")


def _unavailable(name: str, reason: str, error=FileNotFoundError, **metadata):
    """Registers a name whose loading raises ``reason`` (its vocabulary cannot be had yet)."""
    def fail():
        raise error(f"dataset '{name}': {reason}")

    DatasetCatalog.register(name, fail)
    MetadataCatalog.get(name).set(task="semantic", unavailable_reason=reason, **metadata)


def _pascal_context_459(root: Path):
    """The 459 names ship with the dataset, not with DaTaSeg: read from the prepared file."""
    name = "dataseg_pascal_context_459_val"
    ctx = root / "pascal_ctx_d2"
    names_file = root / PASCAL_CONTEXT_459_NAMES
    paths = dict(image_root=str(ctx / "images" / "validation"),
                 sem_seg_root=str(ctx / "annotations_ctx459" / "validation"))
    if not names_file.is_file():
        _unavailable(name, f"class names file not found: {names_file} (write it with "
                     "python datasets/prepare_pascal_context.py)", evaluator_type="sem_seg",
                     **paths)
        return
    try:  # a malformed names file must not break `import dataseg`: checked before registering
        class_names = read_vocabulary(names_file)  # the one reader (dataseg/vocabulary.py)
        if len(class_names) != PASCAL_CONTEXT_459_CLASSES:
            raise ValueError(f"{names_file}: expected {PASCAL_CONTEXT_459_CLASSES} class names "
                             f"(one per line), found {len(class_names)}")
    except (ValueError, VocabularyError) as e:
        _unavailable(name, f"cannot register 459 classes: {e}", error=RuntimeError,
                     evaluator_type="sem_seg", **paths)
        return
    # 16-bit label PNGs, value = class index, 65535 = no label (prepare_pascal_context.py).
    register_semantic_dataset(
        name, ctx / "images" / "validation", ctx / "annotations_ctx459" / "validation",
        class_names, ignore_label=PASCAL_CONTEXT_459_IGNORE, augmentation="resize_crop",
        names_file=str(names_file))


BUILTIN_DATASETS = (
    "dataseg_ade20k_sem_seg_train", "dataseg_ade20k_sem_seg_val", "dataseg_ade20k_panoptic_val",
    "dataseg_coco_2017_train_panoptic", "dataseg_coco_2017_val_panoptic",
    "dataseg_coco_2017_val_sem_seg", "dataseg_objects365_v2_train_box",
    "dataseg_objects365_v2_val_box", "dataseg_o365_instance_seg_val",
    "dataseg_cityscapes_panoptic_val", "dataseg_pascal_context_59_val",
    "dataseg_pascal_context_459_val", "dataseg_pascal_voc_2012_val",
)


def register_all_builtin(root: Optional[str] = None) -> None:
    """Registers every name in ``BUILTIN_DATASETS`` under ``root`` (paths only; idempotent)."""
    if all(n in DatasetCatalog.list() for n in BUILTIN_DATASETS):
        return
    root = default_root(root)
    for register in (_ade, _coco, _objects365, _cityscapes, _pascal):
        register(root)
