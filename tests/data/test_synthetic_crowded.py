"""DATASETS.SYNTHETIC.PRESET "crowded": clusters of touching same-class things, so that semantic
labels alone merge instances (what semantic->panoptic transfer has to undo)."""
import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from dataseg.config import add_dataseg_config
from dataseg.data.synthetic import SyntheticWorldParams, ensure_generated, register_synthetic_world
from dataseg.data.synthetic.scene import render_scene, scene_rng
from dataseg.data.synthetic.vocabulary import scene_kinds


def crowd_stats(preset, n=24, size=128):
    """(instances per image, fraction of instances touching a same-kind instance,
    instances per connected same-kind region)."""
    things, stuff = scene_kinds("pan")
    counts, touching, instances, regions = [], 0, 0, 0
    kernel = np.ones((3, 3), np.uint8)
    for i in range(n):
        scene = render_scene("pan", things, stuff, size, scene_rng(5, 3, i), preset=preset)
        counts.append(len(scene.instances))
        for a, inst in enumerate(scene.instances):
            grown = cv2.dilate(inst.mask.astype(np.uint8), kernel).astype(bool)
            touching += any(b != a and other.kind == inst.kind and (grown & other.mask).any()
                            for b, other in enumerate(scene.instances))
        for kind in {inst.kind for inst in scene.instances}:
            union = np.zeros((size, size), np.uint8)
            for inst in scene.instances:
                if inst.kind == kind:
                    union |= inst.mask.astype(np.uint8)
                    instances += 1
            regions += cv2.connectedComponents(union, connectivity=8)[0] - 1
    return float(np.mean(counts)), touching / max(sum(counts), 1), instances / max(regions, 1)


def test_crowded_world_has_many_touching_same_class_things():
    n_default, touch_default, merge_default = crowd_stats("default")
    n_crowded, touch_crowded, merge_crowded = crowd_stats("crowded")
    assert n_crowded > 1.5 * n_default
    assert touch_crowded > 0.6 and touch_crowded > 3 * touch_default
    # a semantic label map merges about two or more instances into one region
    assert merge_crowded > 1.8 and merge_crowded > merge_default + 0.5


def test_preset_from_cfg_generates_its_own_registered_world(tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_dataseg_config(cfg)
    cfg.merge_from_list(["DATASETS.SYNTHETIC.ROOT", str(tmp_path), "DATASETS.SYNTHETIC.PRESET",
                         "crowded", "DATASETS.SYNTHETIC.IMAGE_SIZE", "64",
                         "DATASETS.SYNTHETIC.NUM_SEMANTIC_TRAIN", "2",
                         "DATASETS.SYNTHETIC.NUM_PANOPTIC_TRAIN", "2",
                         "DATASETS.SYNTHETIC.NUM_BOX_TRAIN", "2",
                         "DATASETS.SYNTHETIC.NUM_VAL", "2"])
    params = SyntheticWorldParams.from_cfg(cfg)
    default = SyntheticWorldParams(**{**params.__dict__, "preset": "default"})
    assert params.preset == "crowded"
    assert params.world_dir() != default.world_dir()
    assert params.world_dir().name.startswith("crowded_")
    ensure_generated(params)
    try:
        register_synthetic_world(cfg)
        records = DatasetCatalog.get("synth_pan_train")
        assert len(records) == 2 and all(r["segments_info"] for r in records)
    finally:
        register_synthetic_world()  # back to the default world for other tests


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="DATASETS.SYNTHETIC.PRESET"):
        SyntheticWorldParams(preset="dense")
