"""The metadata contract every dataset used by DaTaSeg satisfies (see docs/DESIGN.md).

Read it through ``get_dataset_info(name)`` rather than poking at ``MetadataCatalog`` so that a
dataset registered without the keys DaTaSeg needs fails with a message naming the dataset and key.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.utils.colormap import colormap

from ..contract import AUGMENTATION_PRESETS, EVALUATOR_TYPES, TASKS

__all__ = ["TASKS", "EVALUATOR_TYPES", "AUGMENTATION_PRESETS", "DatasetInfo", "get_dataset_info",
           "visualizer_fields"]


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


def visualizer_fields(class_names: Sequence[str]) -> dict:
    """Metadata fields Detectron2's ``Visualizer`` reads, in ONE contiguous space of all K classes.

    The model's contiguous ids (``sem_seg`` channels, ``pred_classes``, panoptic
    ``category_id``) index all K classes, things and stuff mixed in any order, while
    ``Visualizer.draw_panoptic_seg`` / ``draw_instance_predictions`` index ``thing_classes`` and
    ``thing_colors`` with them. So both ``thing_*`` and ``stuff_*`` list every class (the
    convention Mask2Former uses for ADE20K panoptic), with one fixed colour per class.
    """
    names = [str(n) for n in class_names]
    table = colormap(rgb=True, maximum=255).astype(int).tolist()
    colors = [tuple(table[k % len(table)]) for k in range(len(names))]
    return {"thing_classes": list(names), "stuff_classes": list(names),
            "thing_colors": list(colors), "stuff_colors": list(colors)}


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
