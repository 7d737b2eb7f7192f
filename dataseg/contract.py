"""DaTaSeg's dataset contract in one module that imports nothing of the project but the
vocabulary type (``dataseg/vocabulary.py``, itself importing nothing).

The allowed tasks, evaluator types and augmentation presets, and ``get_dataset_info(name)``,
which reads and validates a registered dataset's metadata into a ``DatasetInfo``.
``dataseg.data.dataset_info`` re-exports all of it for the data layer; ``dataseg.modeling``
imports it from here so that the model does not import the data layer (see docs/DESIGN.md,
"One home for the dataset contract").
"""
from dataclasses import dataclass
from typing import List, Optional

from detectron2.data import MetadataCatalog

from .vocabulary import Vocabulary

__all__ = ["TASKS", "EVALUATOR_TYPES", "AUGMENTATION_PRESETS", "DatasetInfo", "get_dataset_info"]

# The task a dataset is trained (and by default evaluated) as.
TASKS = ("semantic", "panoptic", "instance", "box")
# Detectron2 evaluator families a dataset may name (None: training-only, no evaluator).
EVALUATOR_TYPES = ("sem_seg", "coco_panoptic_seg", "coco", None)
# Train augmentation presets (dataseg/data/augmentation.py builds each):
# "lsj" large-scale jitter + fixed-size crop, "resize_crop" short-side resize + crop, "none".
AUGMENTATION_PRESETS = ("lsj", "resize_crop", "none")


@dataclass(frozen=True)
class DatasetInfo:
    """What the model, mappers and evaluators need to know about one dataset."""

    name: str
    task: str
    class_synonyms: List[List[str]]
    is_thing: List[bool]
    ignore_label: int
    evaluator_type: Optional[str]
    # train augmentation preset (one of AUGMENTATION_PRESETS), None if the metadata names none
    # (cfg.DATASETS.TRAIN_AUGMENTATIONS must then name one to train on it)
    augmentation: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_synonyms)

    @property
    def class_names(self) -> List[str]:
        return [names[0] for names in self.class_synonyms]

    @property
    def vocabulary(self) -> Vocabulary:
        """The dataset's classes as a ``Vocabulary`` (source "dataset", origin its name)."""
        return Vocabulary(self.class_synonyms, self.is_thing, source="dataset", origin=self.name)


def get_dataset_info(name: str) -> DatasetInfo:
    """Returns the validated DaTaSeg metadata of a registered dataset.

    Raises KeyError naming the dataset and the missing or malformed key.
    """
    if name not in MetadataCatalog.list():
        raise KeyError(f"dataset '{name}' has no metadata: is it registered? "
                       f"(registered: {', '.join(sorted(MetadataCatalog.list()))[:2000]})")
    meta = MetadataCatalog.get(name)
    for key in ("task", "class_synonyms", "is_thing"):
        if not hasattr(meta, key):
            raise KeyError(f"dataset '{name}': metadata key '{key}' is missing; register it with "
                           "the functions in dataseg.data.register")
    if meta.task not in TASKS:
        raise KeyError(f"dataset '{name}': metadata 'task' is {meta.task!r}, expected one of "
                       f"{TASKS}")
    synonyms = [list(s) if isinstance(s, (list, tuple)) else [s] for s in meta.class_synonyms]
    if any(not s or not all(isinstance(n, str) and n for n in s) for s in synonyms):
        raise KeyError(f"dataset '{name}': 'class_synonyms' must be non-empty lists of names")
    is_thing = [bool(x) for x in meta.is_thing]
    if len(is_thing) != len(synonyms):
        raise KeyError(f"dataset '{name}': 'is_thing' has {len(is_thing)} entries but "
                       f"'class_synonyms' has {len(synonyms)}")
    evaluator_type = getattr(meta, "evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise KeyError(f"dataset '{name}': 'evaluator_type' {evaluator_type!r} is not one of "
                       f"{EVALUATOR_TYPES}")
    augmentation = getattr(meta, "augmentation", None)
    if augmentation is not None and augmentation not in AUGMENTATION_PRESETS:
        raise KeyError(f"dataset '{name}': 'augmentation' {augmentation!r} is not one of "
                       f"{AUGMENTATION_PRESETS}")
    return DatasetInfo(name=name, task=meta.task, class_synonyms=synonyms, is_thing=is_thing,
                       ignore_label=int(getattr(meta, "ignore_label", 255)),
                       evaluator_type=evaluator_type, augmentation=augmentation)
