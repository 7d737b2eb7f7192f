"""The names of DaTaSeg's dataset contract, in one dependency-free module.

``dataseg.data.dataset_info`` re-exports these and validates registered metadata against them;
``dataseg.modeling`` imports them from here so that the model does not import the data layer
(see docs/DESIGN.md, "One home for the dataset contract").
"""

__all__ = ["TASKS", "EVALUATOR_TYPES", "AUGMENTATION_PRESETS"]

# The task a dataset is trained (and by default evaluated) as.
TASKS = ("semantic", "panoptic", "instance", "box")
# Detectron2 evaluator families a dataset may name (None: training-only, no evaluator).
EVALUATOR_TYPES = ("sem_seg", "coco_panoptic_seg", "coco", None)
# Train augmentation presets (dataseg/data/augmentation.py builds each):
# "lsj" large-scale jitter + fixed-size crop, "resize_crop" short-side resize + crop, "none".
AUGMENTATION_PRESETS = ("lsj", "resize_crop", "none")
