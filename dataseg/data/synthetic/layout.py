"""Where each synthetic dataset's files live inside one generated world directory.

Shared by the generator (which writes there) and the registration (which points loaders there
without touching the disk), so the two cannot disagree.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class SplitSpec:
    """One generated split: its scene domain, seed stream code and the formats written."""

    split: str
    domain: str
    code: int
    count_field: str  # SyntheticWorldParams field giving the number of images
    semantic: bool = False
    panoptic: bool = False
    instances: bool = False  # COCO instance json with RLE masks
    boxes: bool = False  # COCO json with boxes only


SPLITS = (
    SplitSpec("sem_train", "sem", 1, "num_semantic_train", semantic=True),
    SplitSpec("sem_val", "sem", 2, "num_val", semantic=True, panoptic=True),
    SplitSpec("pan_train", "pan", 3, "num_panoptic_train", panoptic=True),
    SplitSpec("pan_val", "pan", 4, "num_val", panoptic=True),
    SplitSpec("box_train", "box", 5, "num_box_train", boxes=True),
    SplitSpec("box_val", "box", 6, "num_val", instances=True),
    SplitSpec("unseen_val", "unseen", 7, "num_val", semantic=True),
)


@dataclass(frozen=True)
class SplitPaths:
    """Files of one split (None where the format is not written for it)."""

    image_root: Path
    sem_seg_root: Optional[Path]
    panoptic_root: Optional[Path]
    panoptic_json: Optional[Path]
    json_file: Optional[Path]


def split_paths(world_dir: Path, spec: SplitSpec) -> SplitPaths:
    base = Path(world_dir) / spec.domain
    part = spec.split.split("_", 1)[1]
    return SplitPaths(
        image_root=base / "images" / part,
        sem_seg_root=base / "annotations" / part if spec.semantic else None,
        panoptic_root=base / f"panoptic_{part}" if spec.panoptic else None,
        panoptic_json=base / "annotations" / f"panoptic_{part}.json" if spec.panoptic else None,
        json_file=(base / "annotations" / f"instances_{part}.json" if spec.instances else
                   base / "annotations" / f"boxes_{part}.json" if spec.boxes else None),
    )
