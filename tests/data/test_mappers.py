"""Mapper outputs checked pixel by pixel against the source annotations ("none" augmentation),
empty crops, the LSJ/resize_crop presets, and bad-file errors."""
import numpy as np
import pytest
import torch
from data_fixtures import (
    write_box_dataset,
    write_instance_dataset,
    write_panoptic_dataset,
    write_semantic_dataset,
)
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from PIL import Image

from dataseg.data.augmentation import build_augmentations
from dataseg.data.loading import DatasetFormatError
from dataseg.data.mappers import (
    BoxDatasetMapper,
    InstanceDatasetMapper,
    PanopticDatasetMapper,
    SemanticDatasetMapper,
    build_test_mapper,
    build_train_mapper,
)
from dataseg.data.register import (
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)


class FixedCrop(T.Augmentation):
    """Deterministic crop (x0, y0, w, h) for empty-target tests."""

    def __init__(self, x0, y0, w, h):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return T.CropTransform(self.x0, self.y0, self.w, self.h)


def _none(cfg, name):
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["none"]
    return build_train_mapper(cfg, name)


def _check_common(out, rec, task):
    assert out["task"] == task and out["dataset_name"] == rec["dataset_name"]
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
    assert out["file_name"] == rec["file_name"] and out["image_id"] == rec["image_id"]
    inst = out["instances"]
    assert inst.gt_classes.dtype == torch.int64 and isinstance(inst.gt_boxes, Boxes)
    if inst.has("gt_masks"):
        m = inst.gt_masks
        assert m.dtype == torch.bool and m.shape[1:] == out["image"].shape[1:]
        assert torch.equal(inst.gt_boxes.tensor, _tight(m))


def _tight(masks):
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def test_semantic_pixels(tmp_path, cfg, names):
    ds = write_semantic_dataset(tmp_path, n=2)
    names.append("m_sem")
    register_semantic_dataset("m_sem", ds["image_root"], ds["sem_seg_root"], ds["class_names"])
    mapper = _none(cfg, "m_sem")
    assert isinstance(mapper, SemanticDatasetMapper)
    for rec in DatasetCatalog.get("m_sem"):
        out = mapper(rec)
        _check_common(out, rec, "semantic")
        label = ds["labels"][rec["image_id"]]
        assert torch.equal(out["sem_seg"], torch.as_tensor(label.astype(np.int64)))
        img = np.asarray(Image.open(rec["file_name"]).convert("RGB"))
        assert torch.equal(out["image"], torch.as_tensor(img).permute(2, 0, 1))
        present = sorted(set(np.unique(label).tolist()) - {255})
        assert out["instances"].gt_classes.tolist() == present
        for c, m in zip(present, out["instances"].gt_masks):
            assert torch.equal(m, torch.as_tensor(label == c))  # ignore pixels in no mask
        assert (out["height"], out["width"]) == label.shape


def test_panoptic_pixels_and_crowd(tmp_path, cfg, names):
    ds = write_panoptic_dataset(tmp_path, n=2, crowd=True)
    names.append("m_pan")
    register_panoptic_dataset("m_pan", ds["image_root"], ds["panoptic_root"], ds["panoptic_json"],
                              ds["categories"])
    mapper = _none(cfg, "m_pan")
    assert isinstance(mapper, PanopticDatasetMapper)
    for rec in DatasetCatalog.get("m_pan"):
        out = mapper(rec)
        _check_common(out, rec, "panoptic")
        pan = ds["maps"][rec["image_id"]]
        kept = [s for s in rec["segments_info"] if not s["iscrowd"]]
        assert len(kept) == 4  # the crowd car gives no target
        assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in kept]
        for s, m in zip(kept, out["instances"].gt_masks):
            assert torch.equal(m, torch.as_tensor(pan == s["id"]))


def test_panoptic_ids_in_all_three_rgb_channels(tmp_path, cfg, names):
    """id = R + 256 G + 256^2 B with ids up to 140304 (B = 2); uint8 channels must not
    overflow (numpy 2 raises on uint8 * 256)."""
    ds = write_panoptic_dataset(tmp_path, n=2, crowd=False, id_base=70000)
    names.append("m_pan_rgb")
    register_panoptic_dataset("m_pan_rgb", ds["image_root"], ds["panoptic_root"],
                              ds["panoptic_json"], ds["categories"])
    mapper = _none(cfg, "m_pan_rgb")
    for rec in DatasetCatalog.get("m_pan_rgb"):
        assert max(s["id"] for s in rec["segments_info"]) >= 65536
        out = mapper(rec)
        pan = ds["maps"][rec["image_id"]]
        assert out["instances"].gt_classes.tolist() == [
            s["category_id"] for s in rec["segments_info"]]
        for s, m in zip(rec["segments_info"], out["instances"].gt_masks):
            assert torch.equal(m, torch.as_tensor(pan == s["id"]))


def test_instance_pixels_polygon_and_rle(tmp_path, cfg, names):
    ds = write_instance_dataset(tmp_path, n=2)
    names.append("m_inst")
    register_instance_dataset("m_inst", ds["image_root"], ds["json_file"], ds["categories"])
    mapper = _none(cfg, "m_inst")
    assert isinstance(mapper, InstanceDatasetMapper)
    for rec in DatasetCatalog.get("m_inst"):
        out = mapper(rec)
        _check_common(out, rec, "instance")
        gt = ds["masks"][rec["image_id"]]  # crowd excluded
        assert out["instances"].gt_classes.tolist() == [c for c, _ in gt]
        for (_, want), m in zip(gt, out["instances"].gt_masks):
            assert torch.equal(m, torch.as_tensor(want))


def test_box_targets_and_flip(tmp_path, cfg, names):
    ds = write_box_dataset(tmp_path, n=2, boxes_per_image=5)
    names.append("m_box")
    register_box_dataset("m_box", ds["image_root"], ds["json_file"], ds["categories"])
    mapper = _none(cfg, "m_box")
    assert isinstance(mapper, BoxDatasetMapper)
    rec = DatasetCatalog.get("m_box")[0]
    out = mapper(rec)
    _check_common(out, rec, "box")
    assert not out["instances"].has("gt_masks")
    assert torch.equal(out["instances"].gt_boxes.tensor, torch.as_tensor(rec["boxes"]))
    assert out["instances"].gt_classes.tolist() == rec["box_classes"].tolist()
    flip = BoxDatasetMapper(dataset_name="m_box", augmentations=[T.RandomFlip(prob=1.0)])
    fb = flip(rec)["instances"].gt_boxes.tensor
    w = rec["width"]
    assert torch.allclose(fb[:, 0], w - torch.as_tensor(rec["boxes"][:, 2]))


@pytest.mark.parametrize("kind", ["semantic", "panoptic", "instance", "box"])
def test_crop_without_annotations_gives_valid_empty_target(tmp_path, cfg, names, kind):
    name = f"m_empty_{kind}"
    names.append(name)
    if kind == "semantic":
        ds = write_semantic_dataset(tmp_path, n=1)
        register_semantic_dataset(name, ds["image_root"], ds["sem_seg_root"], ds["class_names"])
        crop, cls = FixedCrop(0, 0, 6, 5), SemanticDatasetMapper   # the ignore block
    elif kind == "panoptic":
        ds = write_panoptic_dataset(tmp_path, n=1)
        register_panoptic_dataset(name, ds["image_root"], ds["panoptic_root"],
                                  ds["panoptic_json"], ds["categories"])
        crop, cls = FixedCrop(0, 30, 3, 2), PanopticDatasetMapper   # the void corner
    elif kind == "instance":
        ds = write_instance_dataset(tmp_path, n=1)
        register_instance_dataset(name, ds["image_root"], ds["json_file"], ds["categories"])
        crop, cls = FixedCrop(37, 0, 3, 3), InstanceDatasetMapper
    else:
        ds = write_box_dataset(tmp_path, n=1, boxes_per_image=0)
        ds["data"]["annotations"] = [{"id": 1, "image_id": 1, "category_id": 5,
                                      "bbox": [0, 0, 5, 5], "iscrowd": 0}]
        open(ds["json_file"], "w").write(__import__("json").dumps(ds["data"]))
        register_box_dataset(name, ds["image_root"], ds["json_file"], ds["categories"])
        crop, cls = FixedCrop(30, 20, 10, 10), BoxDatasetMapper
    rec = DatasetCatalog.get(name)[0]
    out = cls(dataset_name=name, augmentations=[crop], num_classes=4)(rec)
    inst = out["instances"]
    assert isinstance(inst, Instances) and len(inst) == 0
    assert inst.image_size == (crop.h, crop.w) == tuple(out["image"].shape[1:])
    assert inst.gt_classes.shape == (0,) and inst.gt_classes.dtype == torch.int64
    assert inst.gt_boxes.tensor.shape == (0, 4)
    if kind != "box":
        assert inst.gt_masks.shape == (0, crop.h, crop.w) and inst.gt_masks.dtype == torch.bool


def test_lsj_and_resize_crop_presets(tmp_path, cfg, names):
    ds = write_semantic_dataset(tmp_path, n=1, size=(40, 60))
    names.append("m_aug")
    register_semantic_dataset("m_aug", ds["image_root"], ds["sem_seg_root"], ds["class_names"])
    cfg.DATASETS.TRAIN = ("m_aug",)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["lsj"]
    cfg.DATASETS.TRAIN_CROP_SIZES = [64]
    cfg.INPUT.LSJ.MIN_SCALE, cfg.INPUT.LSJ.MAX_SCALE = 0.3, 0.4  # always smaller: padding
    augs = build_augmentations(cfg, "m_aug", True)
    assert [type(a).__name__ for a in augs] == ["RandomFlip", "ResizeScale",
                                                "FixedSizeCropWithSegPad"]
    out = build_train_mapper(cfg, "m_aug")(DatasetCatalog.get("m_aug")[0])
    assert out["image"].shape == (3, 64, 64) and out["sem_seg"].shape == (64, 64)
    assert (out["sem_seg"][-5:, :] == 255).all()  # padded labels are ignore, not class 0
    assert (out["image"][:, -5:, :] == 128).all()
    cfg.DATASETS.TRAIN_AUGMENTATIONS = [""]  # falls back to metadata: resize_crop
    cfg.INPUT.RESIZE_CROP.MIN_SIZE_TRAIN = [50]
    cfg.INPUT.RESIZE_CROP.SINGLE_CATEGORY_MAX_AREA = 0.9
    augs = build_augmentations(cfg, "m_aug", True)
    assert [type(a).__name__ for a in augs] == ["ResizeShortestEdge",
                                                "RandomCrop_CategoryAreaConstraint", "RandomFlip"]
    out = build_train_mapper(cfg, "m_aug")(DatasetCatalog.get("m_aug")[0])
    assert out["sem_seg"].shape == (50, 64)
    test = build_augmentations(cfg, "m_aug", False)
    assert [type(a).__name__ for a in test] == ["ResizeShortestEdge"]
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["bogus"]
    with pytest.raises(ValueError, match="m_aug.*bogus"):
        build_augmentations(cfg, "m_aug", True)


def test_test_mapper(tmp_path, cfg, names):
    ds = write_panoptic_dataset(tmp_path, n=1)
    names.append("m_test")
    register_panoptic_dataset("m_test", ds["image_root"], ds["panoptic_root"],
                              ds["panoptic_json"], ds["categories"])
    rec = DatasetCatalog.get("m_test")[0]
    out = build_test_mapper(cfg, "m_test")(rec)
    assert set(out) == {"image", "height", "width", "dataset_name", "task", "file_name",
                        "image_id"}
    assert out["task"] == "panoptic" and out["image"].shape == (3, 48, 60)
    assert (out["height"], out["width"]) == (32, 40)


# ------------------------------------------------------------------ bad files
def _sem(tmp_path, cfg, names):
    ds = write_semantic_dataset(tmp_path, n=1)
    names.append("m_bad")
    register_semantic_dataset("m_bad", ds["image_root"], ds["sem_seg_root"], ds["class_names"])
    return _none(cfg, "m_bad"), DatasetCatalog.get("m_bad")[0]


def test_label_size_mismatch_names_both_files(tmp_path, cfg, names):
    mapper, rec = _sem(tmp_path, cfg, names)
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(rec["sem_seg_file_name"])
    with pytest.raises(DatasetFormatError) as e:
        mapper(rec)
    msg = str(e.value)
    assert rec["sem_seg_file_name"] in msg and rec["file_name"] in msg
    assert "11x10" in msg and "32x24" in msg


def test_corrupt_and_missing_image(tmp_path, cfg, names):
    mapper, rec = _sem(tmp_path, cfg, names)
    open(rec["file_name"], "wb").write(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match=f"cannot read image {rec['file_name']}"):
        mapper(rec)
    rec2 = dict(rec, file_name=str(tmp_path / "gone.jpg"))
    with pytest.raises(DatasetFormatError, match="gone.jpg"):
        mapper(rec2)
    mapper.skip_bad_records = True
    assert mapper(rec) is None and mapper(rec2) is None and mapper.num_skipped == 2


def test_label_values_outside_vocabulary(tmp_path, cfg, names):
    mapper, rec = _sem(tmp_path, cfg, names)
    Image.fromarray(np.full((24, 32), 9, np.uint8)).save(rec["sem_seg_file_name"])
    with pytest.raises(DatasetFormatError, match=r"values \[9\]"):
        mapper(rec)


def test_panoptic_png_id_not_in_segments_info(tmp_path, cfg, names):
    ds = write_panoptic_dataset(tmp_path, n=1)
    names.append("m_pan_bad")
    register_panoptic_dataset("m_pan_bad", ds["image_root"], ds["panoptic_root"],
                              ds["panoptic_json"], ds["categories"])
    rec = DatasetCatalog.get("m_pan_bad")[0]
    rec["segments_info"] = rec["segments_info"][1:]
    with pytest.raises(DatasetFormatError, match="segment ids \\[1300\\]"):
        _none(cfg, "m_pan_bad")(rec)
