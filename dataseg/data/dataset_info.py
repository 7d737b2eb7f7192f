"""The metadata contract every dataset used by DaTaSeg satisfies (see docs/DESIGN.md).

Read it through ``get_dataset_info(name)`` rather than poking at ``MetadataCatalog`` so that a
dataset registered without the keys DaTaSeg needs fails with a message naming the dataset and key.
The contract itself (tasks, evaluator types, augmentation presets, ``DatasetInfo``) lives in
``dataseg/contract.py``, which the model imports without importing the data layer; this module
re-exports it for the data layer and adds the Visualizer fields of a class list.
"""
from typing import Sequence

from detectron2.utils.colormap import colormap

from ..contract import (
    AUGMENTATION_PRESETS,
    EVALUATOR_TYPES,
    TASKS,
    DatasetInfo,
    get_dataset_info,
)

__all__ = ["TASKS", "EVALUATOR_TYPES", "AUGMENTATION_PRESETS", "DatasetInfo", "get_dataset_info",
           "visualizer_fields"]


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
