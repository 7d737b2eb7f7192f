"""Generates the synthetic world on disk once per parameter set, safely under concurrency.

A world is rendered into a private temporary directory next to its final place and published by
one atomic ``os.rename``; a process that loses the race discards its copy and uses the winner's.
Readers therefore never see a half-written world, and a crash leaves only a ``.tmp-*`` folder.
"""
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict

from .layout import SPLITS, SplitSpec, split_paths
from .params import SyntheticWorldParams
from .scene import render_scene, scene_rng
from .vocabulary import scene_kinds, vocabulary
from .writers import (
    coco_annotations,
    coco_categories,
    save_jpeg,
    save_panoptic,
    save_semantic,
    write_json,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def _generate_split(world: Path, spec: SplitSpec, params: SyntheticWorldParams) -> Dict:
    """Renders and writes all images of one split; returns its counts."""
    paths = split_paths(world, spec)
    vocab = vocabulary(spec.domain)
    things, stuff = scene_kinds(spec.domain)
    for d in (paths.image_root, paths.sem_seg_root, paths.panoptic_root):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    for f in (paths.panoptic_json, paths.json_file):
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
    n = getattr(params, spec.count_field)
    size = params.image_size
    images, pan_anns, coco_anns = [], [], []
    counts = {"images": n, "segments": 0, "instances": 0}
    for i in range(n):
        scene = render_scene(spec.domain, things, stuff, size, scene_rng(params.seed, spec.code, i),
                             preset=params.preset)
        stem = f"{spec.split}_{i:06d}"
        save_jpeg(scene.image, paths.image_root / f"{stem}.jpg")
        images.append({"id": i + 1, "file_name": f"{stem}.jpg", "height": size, "width": size})
        if spec.semantic:
            save_semantic(scene, vocab, paths.sem_seg_root / f"{stem}.png")
        if spec.panoptic:
            segments = save_panoptic(scene, vocab, paths.panoptic_root / f"{stem}.png")
            pan_anns.append({"image_id": i + 1, "file_name": f"{stem}.png",
                             "segments_info": segments})
            counts["segments"] += len(segments)
        if spec.instances or spec.boxes:
            anns = coco_annotations(scene, vocab, i + 1, len(coco_anns) + 1,
                                    with_masks=spec.instances)
            coco_anns.extend(anns)
        counts["instances"] += len(scene.instances)
    if spec.panoptic:
        write_json({"info": {"description": f"DaTaSeg synthetic world: {spec.split}"},
                    "images": images, "annotations": pan_anns,
                    "categories": coco_categories(vocab, things_only=False)}, paths.panoptic_json)
    if spec.instances or spec.boxes:
        write_json({"info": {"description": f"DaTaSeg synthetic world: {spec.split}"},
                    "images": images, "annotations": coco_anns,
                    "categories": coco_categories(vocab, things_only=True)}, paths.json_file)
        counts["boxes"] = len(coco_anns)
    return counts


def generate_world(params: SyntheticWorldParams, out_dir: Path) -> Dict:
    """Writes every split of the world into ``out_dir`` (no atomicity: see ensure_generated)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {spec.split: _generate_split(out_dir, spec, params) for spec in SPLITS}
    write_json({"params": {k: v for k, v in params.__dict__.items() if k != "root"},
                "fingerprint": params.fingerprint(), "splits": summary}, out_dir / SUMMARY_FILE)
    return summary


def is_generated(params: SyntheticWorldParams) -> bool:
    return (params.world_dir() / SUMMARY_FILE).is_file()


def ensure_generated(params=None) -> Path:
    """Returns the world directory for ``params``, generating it first if it is missing.

    ``params``: SyntheticWorldParams, a Detectron2 cfg, or None for the defaults.
    """
    params = SyntheticWorldParams.coerce(params)
    target = params.world_dir()
    if (target / SUMMARY_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published world is shared
    try:
        start = time.perf_counter()
        generate_world(params, tmp)
        try:
            os.rename(tmp, target)  # atomic publish; fails if another process won
        except OSError:
            if not (target / SUMMARY_FILE).is_file():
                raise
        else:
            logger.info("generated synthetic world %s in %.1fs", target,
                        time.perf_counter() - start)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_summary(world_dir: Path) -> Dict:
    return json.loads((Path(world_dir) / SUMMARY_FILE).read_text())
