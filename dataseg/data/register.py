"""Public functions to plug a user's own dataset into DaTaSeg (and Detectron2).

Each ``register_*`` call registers a lazy loader in ``DatasetCatalog`` (no file I/O happens
until the dataset is used) and sets the complete metadata contract of docs/DESIGN.md in
``MetadataCatalog``, so that DaTaSeg's mappers, the model and Detectron2's evaluators
(SemSegEvaluator, COCOPanopticEvaluator, COCOEvaluator) work on it.

``categories`` is a list of ``{"id": dataset category id, "name": str, "isthing": 0/1,
"synonyms": [str] (optional)}``; contiguous ids follow the list order. A semantic dataset's
``class_names`` is a ``dataseg.vocabulary.Vocabulary`` or a list of classes in its syntax. Two
classes with one name (case-insensitively) are refused, naming both positions.

Registering a name twice is an error; pass ``replace=True`` to re-register (the synthetic world
does), or remove it first with :func:`unregister_dataset`.
"""
from typing import Callable, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..vocabulary import Vocabulary, vocabulary_from_categories, vocabulary_from_items
from .columnar import load_box_dataset
from .dataset_info import AUGMENTATION_PRESETS, EVALUATOR_TYPES, TASKS, visualizer_fields
from .loading import load_instance_dicts, load_panoptic_dicts, load_semantic_dicts

__all__ = [
    "register_dataset",
    "register_semantic_dataset",
    "register_panoptic_dataset",
    "register_instance_dataset",
    "register_box_dataset",
    "unregister_dataset",
]

# Largest ignore label of a semantic dataset: 16-bit label PNGs.
MAX_IGNORE_LABEL = 65535


def unregister_dataset(name: str) -> None:
    """Removes a dataset from DatasetCatalog and MetadataCatalog (no error if absent)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _check_name(name: str, replace: bool) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if name in DatasetCatalog.list() or name in MetadataCatalog.list():
        if not replace:
            raise ValueError(f"dataset '{name}' is already registered; pass replace=True or call "
                             "dataseg.data.register.unregister_dataset(name) first")
        unregister_dataset(name)


def _check_augmentation(name: str, augmentation: str) -> None:
    if augmentation not in AUGMENTATION_PRESETS:
        raise ValueError(f"dataset '{name}': augmentation {augmentation!r} is not one of "
                         f"{AUGMENTATION_PRESETS}")


def _normalise_categories(name: str, categories: Sequence[dict], force_thing: bool) -> List[dict]:
    """Validates the category list; returns copies with 'isthing' and 'synonyms' filled in."""
    if not categories:
        raise ValueError(f"dataset '{name}': 'categories' is empty")
    out, seen = [], set()
    for k, c in enumerate(categories):
        for key in ("id", "name"):
            if not isinstance(c, dict) or key not in c:
                raise ValueError(f"dataset '{name}': categories[{k}] has no key '{key}'")
        if not isinstance(c["name"], str) or not c["name"]:
            raise ValueError(f"dataset '{name}': categories[{k}] 'name' must be a non-empty str")
        cid = int(c["id"])
        if cid in seen:
            raise ValueError(f"dataset '{name}': category id {cid} appears twice")
        seen.add(cid)
        synonyms = [str(s) for s in c.get("synonyms", []) if s and s != c["name"]]
        out.append({"id": cid, "name": c["name"], "synonyms": synonyms,
                    "isthing": 1 if force_thing else int(bool(c.get("isthing", 1)))})
    vocabulary_from_categories(out, f"dataset '{name}'")  # the duplicate rule
    return out


def _contract_metadata(categories: List[dict]) -> dict:
    """Metadata keys common to all tasks, in ONE contiguous space of all K classes."""
    names = [c["name"] for c in categories]
    return {
        "class_synonyms": [[c["name"]] + c["synonyms"] for c in categories],
        "is_thing": [bool(c["isthing"]) for c in categories],
        "ignore_label": 255,
        # thing_/stuff_classes and _colors both list all K classes (Visualizer indexes them
        # with contiguous ids over all classes; see visualizer_fields)
        **visualizer_fields(names),
        # things: thing ids only; stuff: ALL ids (Mask2Former's convention for COCO panoptic).
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def register_dataset(name: str, task: str, loader: Callable[[], Sequence[dict]],
                     categories: List[dict], *, evaluator_type: Optional[str],
                     augmentation: str, replace: bool = False,
                     before_load: Optional[Callable[[], None]] = None,
                     metadata: Optional[dict] = None) -> None:
    """The one registration core every ``register_*`` function goes through.

    Registers ``loader`` (no arguments -> the records) in ``DatasetCatalog`` under ``name``,
    preceded at each load by ``before_load()`` when given (e.g. "generate the files if
    missing"), and sets the contract metadata of the normalised ``categories`` (one contiguous
    space of all K classes) plus ``task``, ``evaluator_type``, ``augmentation`` and
    ``metadata`` (which may override a contract key such as ``ignore_label``). Everything is
    validated before anything is registered, so a rejected call leaves the catalogs as they were
    (``replace=True`` removes an existing entry of that name only once the call is valid).
    """
    if task not in TASKS:
        raise ValueError(f"dataset '{name}': task {task!r} is not one of {TASKS}")
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(f"dataset '{name}': evaluator_type {evaluator_type!r} is not one of "
                         f"{EVALUATOR_TYPES}")
    _check_augmentation(name, augmentation)
    _check_name(name, replace)

    def load():
        if before_load is not None:
            before_load()
        return loader()

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**{
        **_contract_metadata(categories), "task": task, "evaluator_type": evaluator_type,
        "augmentation": augmentation, **(metadata or {})})


def register_semantic_dataset(name: str, image_root: str, sem_seg_root: str,
                              class_names: Union[Vocabulary, Sequence[Union[str, Sequence[str]]]],
                              *,
                              image_ext: str = ".jpg", label_ext: str = ".png",
                              ignore_label: int = 255, is_thing: Optional[Sequence[bool]] = None,
                              evaluator_type: Optional[str] = "sem_seg",
                              augmentation: str = "resize_crop", replace: bool = False,
                              before_load: Optional[Callable[[], None]] = None,
                              **extra_metadata) -> None:
    """Registers an ADE-style semantic dataset (``before_load``: see ``register_dataset``).

    Images are ``<image_root>/<stem><image_ext>``, labels ``<sem_seg_root>/<stem><label_ext>``
    whose pixel value i is contiguous class i (``ignore_label`` pixels are ignored).
    Labels are 8-bit PNGs (up to 255 classes, ``ignore_label`` usually 255) or, for larger
    vocabularies such as Pascal Context 459, 16-bit PNGs (mode "I;16", written from a uint16
    array) with ``ignore_label`` e.g. 65535. A label value that is neither a class nor
    ``ignore_label`` is reported by the mappers, naming the file and value.
    ``class_names``: a ``Vocabulary``, or one class per item: a string in the vocabulary
    syntax (``"sofa | couch"``) or a list of synonyms (first = display name).
    ``is_thing`` defaults to the vocabulary's ``:stuff``/``:thing`` marks, else all False.
    """
    if not isinstance(class_names, Vocabulary) and not class_names:
        raise ValueError(f"dataset '{name}': 'class_names' is empty")
    if not len(class_names) <= int(ignore_label) <= MAX_IGNORE_LABEL:
        raise ValueError(
            f"dataset '{name}': ignore_label {ignore_label} must be in [{len(class_names)}, "
            f"{MAX_IGNORE_LABEL}] (values < K = {len(class_names)} are classes; 8-bit label PNGs "
            "allow up to 255 classes with ignore 255, 16-bit PNGs more, e.g. ignore 65535)")
    vocab = class_names if isinstance(class_names, Vocabulary) else vocabulary_from_items(
        class_names, f"dataset '{name}'", label="class_names")
    synonyms = [list(s) for s in vocab.class_synonyms]
    if is_thing is None:
        is_thing = list(vocab.things_or(False).is_thing)
    if len(is_thing) != len(synonyms):
        raise ValueError(f"dataset '{name}': is_thing has {len(is_thing)} entries, class_names "
                         f"has {len(synonyms)}")
    categories = [{"id": i, "name": s[0], "synonyms": s[1:], "isthing": int(bool(t))}
                  for i, (s, t) in enumerate(zip(synonyms, is_thing))]
    image_root, sem_seg_root = str(image_root), str(sem_seg_root)
    register_dataset(
        name, "semantic", lambda: load_semantic_dicts(
            name, image_root, sem_seg_root, image_ext=image_ext, label_ext=label_ext),
        categories, evaluator_type=evaluator_type, augmentation=augmentation, replace=replace,
        before_load=before_load,
        metadata={"ignore_label": int(ignore_label), "image_root": image_root,
                  "sem_seg_root": sem_seg_root, **extra_metadata})


def register_panoptic_dataset(name: str, image_root: str, panoptic_root: str, panoptic_json: str,
                              categories: Sequence[dict], *, sem_seg_root: Optional[str] = None,
                              evaluator_type: Optional[str] = "coco_panoptic_seg",
                              augmentation: str = "lsj", replace: bool = False,
                              before_load: Optional[Callable[[], None]] = None,
                              **extra_metadata) -> None:
    """Registers a COCO-panoptic-format dataset (PNG segment ids + json segments_info).

    ``sem_seg_root`` (optional): semantic PNGs named like the panoptic PNGs, added to each
    record as ``"sem_seg_file_name"`` (for SemSegEvaluator). ``before_load``: see
    ``register_dataset``.
    """
    cats = _normalise_categories(name, categories, force_thing=False)
    image_root, panoptic_root = str(image_root), str(panoptic_root)
    panoptic_json = str(panoptic_json)
    sem_seg_root = None if sem_seg_root is None else str(sem_seg_root)
    extra = {"sem_seg_root": sem_seg_root} if sem_seg_root is not None else {}
    register_dataset(
        name, "panoptic", lambda: load_panoptic_dicts(
            name, image_root, panoptic_root, panoptic_json, cats, sem_seg_root=sem_seg_root),
        cats, evaluator_type=evaluator_type, augmentation=augmentation, replace=replace,
        before_load=before_load,
        metadata={"image_root": image_root, "panoptic_root": panoptic_root,
                  "panoptic_json": panoptic_json, **extra, **extra_metadata})


def register_instance_dataset(name: str, image_root: str, json_file: str,
                              categories: Sequence[dict], *, evaluator_type: Optional[str] = "coco",
                              augmentation: str = "lsj", replace: bool = False,
                              before_load: Optional[Callable[[], None]] = None,
                              **extra_metadata) -> None:
    """Registers a COCO instance json (polygon or RLE masks); every class is a thing.
    ``before_load``: see ``register_dataset``."""
    _register_coco_json(name, "instance", load_instance_dicts, image_root, json_file,
                        categories, evaluator_type, augmentation, replace, before_load,
                        extra_metadata)


def register_box_dataset(name: str, image_root: str, json_file: str, categories: Sequence[dict],
                         *, evaluator_type: Optional[str] = None, augmentation: str = "lsj",
                         replace: bool = False, before_load: Optional[Callable[[], None]] = None,
                         **extra_metadata) -> None:
    """Registers a COCO json used as boxes only (e.g. Objects365); every class is a thing.

    Records are memory-lean (``boxes`` / ``box_classes`` arrays, see dataseg.data.loading);
    the loader returns a lazy, memory-mapped ``ColumnarBoxDataset`` (dataseg.data.columnar:
    a memory-mapped cache of the json, the json path as the fallback). ``before_load``: see
    ``register_dataset``.
    """
    _register_coco_json(name, "box", load_box_dataset, image_root, json_file, categories,
                        evaluator_type, augmentation, replace, before_load, extra_metadata)


def _register_coco_json(name, task, load, image_root, json_file, categories, evaluator_type,
                        augmentation, replace, before_load, extra_metadata) -> None:
    """Instance and box datasets: a COCO json whose every class is a thing."""
    cats = _normalise_categories(name, categories, force_thing=True)
    image_root, json_file = str(image_root), str(json_file)
    register_dataset(name, task, lambda: load(name, image_root, json_file, cats), cats,
                     evaluator_type=evaluator_type, augmentation=augmentation, replace=replace,
                     before_load=before_load,
                     metadata={"image_root": image_root, "json_file": json_file,
                               **extra_metadata})
