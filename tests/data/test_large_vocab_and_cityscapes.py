"""Semantic data with more than 255 classes (16-bit labels, ignore 65535: Pascal Context 459)
and the Cityscapes panoptic layout written by cityscapesscripts' createPanopticImgs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import id2rgb
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from dataseg.data import builtin
from dataseg.data.dataset_info import get_dataset_info
from dataseg.data.loading import DatasetFormatError
from dataseg.data.mappers import (
    PanopticDatasetMapper,
    SemanticDatasetMapper,
    build_test_mapper,
    build_train_mapper,
)
from dataseg.data.register import (
    register_panoptic_dataset,
    register_semantic_dataset,
    unregister_dataset,
)

K = 300
IGNORE = 65535


# ------------------------------------------------------------------ 16-bit semantic labels
def write_16bit_semantic_dataset(root, n=2, size=(24, 32), seed=0):
    """<root>/images/*.jpg + <root>/labels/*.png as 16-bit PNGs with classes above 255."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    h, w = size
    labels = {}
    for i in range(n):
        stem = f"ctx_{i}"
        label = np.zeros((h, w), np.uint16)
        for k, c in enumerate((3 + i, 255, 256, 299 - i)):  # 255 is a class here, not ignore
            label[:, k * w // 4:(k + 1) * w // 4] = c
        label[: h // 4, : w // 4] = IGNORE
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}.jpg", quality=95)
        Image.fromarray(label).save(root / "labels" / f"{stem}.png")
        labels[stem] = label
    return {"image_root": str(root / "images"), "sem_seg_root": str(root / "labels"),
            "class_names": [f"class {c}" for c in range(K)], "labels": labels}


def _register_16bit(tmp_path, names, name="big_sem", **kwargs):
    ds = write_16bit_semantic_dataset(tmp_path, **kwargs)
    names.append(name)
    register_semantic_dataset(name, ds["image_root"], ds["sem_seg_root"], ds["class_names"],
                              ignore_label=IGNORE)
    return ds


def test_label_png_is_16_bit(tmp_path):
    ds = write_16bit_semantic_dataset(tmp_path, n=1)
    path = Path(ds["sem_seg_root"]) / "ctx_0.png"
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")  # Pillow reads 16-bit grayscale PNGs as "I"
        assert np.array_equal(np.asarray(im), ds["labels"]["ctx_0"])


def test_prepare_pascal_context_writes_16_bit_labels(tmp_path):
    """The prepare script's 459 LUT + save_png produce what the semantic loader expects."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "datasets"))
    from prepare_common import save_png

    lut459 = np.full(461, 65535, np.uint16)  # as in prepare_pascal_context.py
    lut459[1:460] = np.arange(459)
    mat = np.array([[1, 459, 460], [300, 256, 257]])  # 460 = no label
    save_png(lut459[mat], tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert np.asarray(im).tolist() == [[0, 458, 65535], [299, 255, 256]]


def test_register_ignore_label_range(tmp_path, names):
    names.extend(["bad_ign", "ok_ign"])
    with pytest.raises(ValueError, match=r"ignore_label 255 must be in \[300, 65535\]"):
        register_semantic_dataset("bad_ign", tmp_path, tmp_path, [f"c{i}" for i in range(K)])
    with pytest.raises(ValueError, match="ignore_label 70000"):
        register_semantic_dataset("bad_ign", tmp_path, tmp_path, ["a"], ignore_label=70000)
    with pytest.raises(ValueError, match="ignore_label 1 must be in"):
        register_semantic_dataset("bad_ign", tmp_path, tmp_path, ["a", "b"], ignore_label=1)
    assert "bad_ign" not in DatasetCatalog.list()
    register_semantic_dataset("ok_ign", tmp_path, tmp_path, [f"c{i}" for i in range(K)],
                              ignore_label=IGNORE)
    assert get_dataset_info("ok_ign").ignore_label == IGNORE
    assert MetadataCatalog.get("ok_ign").ignore_label == IGNORE


def test_16bit_semantic_mapper_pixels(tmp_path, cfg, names):
    ds = _register_16bit(tmp_path, names)
    cfg.DATASETS.TRAIN = ("big_sem",)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["none"]
    mapper = build_train_mapper(cfg, "big_sem")
    assert isinstance(mapper, SemanticDatasetMapper) and mapper.ignore_label == IGNORE
    for rec in DatasetCatalog.get("big_sem"):
        out = mapper(rec)
        label = ds["labels"][rec["image_id"]].astype(np.int64)
        assert out["sem_seg"].dtype == torch.int64
        assert torch.equal(out["sem_seg"], torch.as_tensor(label))
        present = sorted(set(np.unique(label).tolist()) - {IGNORE})
        assert max(present) > 255 and 255 in present
        assert out["instances"].gt_classes.tolist() == present
        for c, m in zip(present, out["instances"].gt_masks):
            assert torch.equal(m, torch.as_tensor(label == c))  # ignore pixels in no mask


@pytest.mark.parametrize("preset", ["resize_crop", "lsj"])
def test_16bit_semantic_mapper_with_augmentation(tmp_path, cfg, names, preset):
    """Resize (nearest), crop and padding keep label values exact; padding is 65535."""
    ds = _register_16bit(tmp_path, names)
    cfg.DATASETS.TRAIN = ("big_sem",)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = [preset]
    cfg.DATASETS.TRAIN_CROP_SIZES = [40]
    cfg.INPUT.RESIZE_CROP.MIN_SIZE_TRAIN = (36,)
    cfg.INPUT.RESIZE_CROP.MAX_SIZE_TRAIN = 100
    cfg.INPUT.LSJ.MIN_SCALE, cfg.INPUT.LSJ.MAX_SCALE = 0.5, 0.6  # smaller than the crop: pad
    mapper = build_train_mapper(cfg, "big_sem")
    allowed = set().union(*(np.unique(v).tolist() for v in ds["labels"].values()))
    for rec in DatasetCatalog.get("big_sem"):
        out = mapper(rec)
        sem = out["sem_seg"]
        assert sem.dtype == torch.int64 and set(sem.unique().tolist()) <= allowed
        assert sem.shape == out["image"].shape[1:]
        classes = out["instances"].gt_classes.tolist()
        assert classes == sorted(set(sem.unique().tolist()) - {IGNORE})
        for c, m in zip(classes, out["instances"].gt_masks):
            assert torch.equal(m, sem == c)
        if preset == "lsj":
            assert sem.shape == (40, 40) and (sem[-1] == IGNORE).all()  # padded rows


def test_16bit_label_value_outside_vocabulary(tmp_path, cfg, names):
    _register_16bit(tmp_path, names, n=1)
    rec = DatasetCatalog.get("big_sem")[0]
    label = np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.uint16)
    label[5, 5] = 400  # >= K and not the ignore label
    Image.fromarray(label).save(rec["sem_seg_file_name"])
    cfg.DATASETS.TRAIN = ("big_sem",)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["none"]
    for mapper in (build_train_mapper(cfg, "big_sem"), build_test_mapper(cfg, "big_sem")):
        with pytest.raises(DatasetFormatError) as e:
            mapper(rec)
        assert rec["sem_seg_file_name"] in str(e.value) and "[400]" in str(e.value)
        assert f"< {K}" in str(e.value) and str(IGNORE) in str(e.value)


def test_sem_seg_evaluator_on_16bit_labels(tmp_path, cfg, names):
    """Detectron2's SemSegEvaluator: (K+1)^2 confusion matrix, ignore 65535 -> K."""
    ds = _register_16bit(tmp_path, names)
    test_mapper = build_test_mapper(cfg, "big_sem")
    ev = SemSegEvaluator("big_sem", distributed=False)
    assert ev._num_classes == K and ev._ignore_label == IGNORE
    for perfect in (True, False):
        ev.reset()
        for rec in DatasetCatalog.get("big_sem"):
            inp = test_mapper(rec)  # validates the label
            gt = torch.as_tensor(ds["labels"][rec["image_id"]].astype(np.int64))
            pred = gt.clone()
            pred[gt == IGNORE] = 7  # ignored pixels: any prediction
            if not perfect:
                pred[:, :4] = 256  # some wrong pixels
            logits = torch.nn.functional.one_hot(pred, K).permute(2, 0, 1).float()
            ev.process([inp], [{"sem_seg": logits}])
        res = ev.evaluate()["sem_seg"]
        assert math.isfinite(res["mIoU"]) and math.isfinite(res["pACC"])
        assert ev._conf_matrix.shape == (K + 1, K + 1)
        n_ignored = sum(int((v == IGNORE).sum()) for v in ds["labels"].values())
        assert ev._conf_matrix[:, K].sum() == n_ignored
        if perfect:
            assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
            assert res["IoU-class 299"] == pytest.approx(100.0)
        else:
            assert 0 < res["mIoU"] < 100 and res["IoU-class 256"] < 100


def test_builtin_pascal_context_459_loads_maps_and_evaluates(tmp_path, cfg):
    """The builtin name on a tiny dataset in the layout prepare_pascal_context.py writes."""
    name = "dataseg_pascal_context_459_val"
    ctx = tmp_path / "pascal_ctx_d2"
    ds = write_16bit_semantic_dataset(ctx / "tmp", n=2)
    (ctx / "images").mkdir()
    (ctx / "annotations_ctx459").mkdir()
    Path(ds["image_root"]).rename(ctx / "images" / "validation")
    Path(ds["sem_seg_root"]).rename(ctx / "annotations_ctx459" / "validation")
    (tmp_path / builtin.PASCAL_CONTEXT_459_NAMES).write_text(
        "".join(f"name {i}, alias {i}\n" for i in range(459)))
    try:
        unregister_dataset(name)
        builtin._pascal_context_459(tmp_path)
        info = get_dataset_info(name)
        assert (info.num_classes, info.ignore_label) == (459, IGNORE)
        assert info.class_synonyms[458] == ["name 458", "alias 458"]
        recs = DatasetCatalog.get(name)
        assert [r["image_id"] for r in recs] == ["ctx_0", "ctx_1"]
        cfg.DATASETS.TRAIN = (name,)
        out = build_train_mapper(cfg, name)(recs[0])  # its default preset: resize_crop
        assert set(out["sem_seg"].unique().tolist()) <= {3, 255, 256, 299, IGNORE}
        ev = SemSegEvaluator(name, distributed=False)
        ev.reset()
        test_mapper = build_test_mapper(cfg, name)
        for rec in recs:
            inp = test_mapper(rec)
            gt = torch.as_tensor(ds["labels"][rec["image_id"]].astype(np.int64))
            pred = torch.where(gt == IGNORE, 0, gt)
            ev.process([inp], [{"sem_seg": torch.nn.functional.one_hot(pred, 459)
                                .permute(2, 0, 1).float()}])
        assert ev.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)
    finally:
        unregister_dataset(name)
        builtin._pascal_context_459(builtin.default_root())


# ------------------------------------------------------------------ Cityscapes panoptic
CITY_CATS = [{k: c[k] for k in ("id", "name", "isthing", "synonyms")}
             for c in builtin.load_vocabulary("cityscapes_19")]


def write_cityscapes_panoptic(root, image_suffix="_leftImg8bit.png", size=(16, 32), seed=0):
    """createPanopticImgs layout: leftImg8bit/val/<city>/*_leftImg8bit.png, flat PNGs in
    gtFine/cityscapes_panoptic_val/*_gtFine_panoptic.png and gtFine/cityscapes_panoptic_val.json
    whose names carry no city folder and whose image ids are strings."""
    root = Path(root) / "cityscapes"
    pan_dir = root / "gtFine" / "cityscapes_panoptic_val"
    pan_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    h, w = size
    images, anns, maps = [], [], {}
    for city, seq, frame in (("frankfurt", "000000", "000294"), ("lindau", "000001", "000019")):
        base = f"{city}_{seq}_{frame}"
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "leftImg8bit" / "val" / city / f"{base}_leftImg8bit.png")
        pan = np.zeros((h, w), np.int64)
        pan[: h // 2] = 23          # sky (stuff: id = label id)
        pan[h // 2:] = 7            # road
        pan[4:12, 2:8] = 24001      # person instance 1 (label id * 1000 + instance)
        pan[6:14, 20:30] = 26       # car group without instance id: crowd
        pan[-1, -2:] = 0            # unlabelled
        segs = [{"id": int(i), "category_id": int(i if i < 1000 else i // 1000),
                 "iscrowd": int(i == 26), "area": int((pan == i).sum()), "bbox": [0, 0, 1, 1]}
                for i in np.unique(pan) if i]
        Image.fromarray(id2rgb(pan)).save(pan_dir / f"{base}_gtFine_panoptic.png")
        images.append({"id": base, "file_name": base + image_suffix, "height": h, "width": w})
        anns.append({"image_id": base, "file_name": f"{base}_gtFine_panoptic.png",
                     "segments_info": segs})
        maps[base] = pan
    cats = [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in CITY_CATS]
    (root / "gtFine" / "cityscapes_panoptic_val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root, maps


@pytest.fixture
def builtin_cityscapes():
    """Re-registers the builtin Cityscapes name under a given root; restores it afterwards."""
    name = "dataseg_cityscapes_panoptic_val"

    def register(root):
        unregister_dataset(name)
        builtin._cityscapes(Path(root))
        return name

    yield register
    unregister_dataset(name)
    builtin._cityscapes(builtin.default_root())


@pytest.mark.parametrize("image_suffix", ["_leftImg8bit.png", "_gtFine_panoptic.png"])
def test_cityscapes_panoptic_layout(tmp_path, cfg, builtin_cityscapes, image_suffix):
    city_root, maps = write_cityscapes_panoptic(tmp_path, image_suffix=image_suffix)
    name = builtin_cityscapes(tmp_path)
    recs = DatasetCatalog.get(name)
    assert [r["image_id"] for r in recs] == list(maps)
    for r in recs:
        city = r["image_id"].split("_")[0]
        assert r["file_name"] == str(city_root / "leftImg8bit" / "val" / city /
                                     f"{r['image_id']}_leftImg8bit.png")
        assert r["pan_seg_file_name"] == str(city_root / "gtFine" / "cityscapes_panoptic_val" /
                                             f"{r['image_id']}_gtFine_panoptic.png")
    cats = {s["id"]: s["category_id"] for s in recs[0]["segments_info"]}
    names = [c["name"] for c in CITY_CATS]
    assert cats == {7: names.index("road"), 23: names.index("sky"),
                    24001: names.index("person"), 26: names.index("car")}
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TRAIN_AUGMENTATIONS = ["none"]
    mapper = build_train_mapper(cfg, name)
    assert isinstance(mapper, PanopticDatasetMapper)
    rec = recs[1]
    out = mapper(rec)
    pan = maps[rec["image_id"]]
    kept = [s for s in rec["segments_info"] if not s["iscrowd"]]
    assert len(kept) == 3  # the crowd car gives no target
    assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in kept]
    for s, m in zip(kept, out["instances"].gt_masks):
        assert torch.equal(m, torch.as_tensor(pan == s["id"]))
    assert out["image"].shape == (3, 16, 32) and out["image_id"] == rec["image_id"]


def test_cityscapes_missing_image_names_every_path(tmp_path, builtin_cityscapes):
    city_root, _ = write_cityscapes_panoptic(tmp_path)
    missing = city_root / "leftImg8bit" / "val" / "lindau" / "lindau_000001_000019_leftImg8bit.png"
    missing.unlink()
    name = builtin_cityscapes(tmp_path)
    with pytest.raises(DatasetFormatError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert "lindau_000001_000019" in msg and "tried" in msg
    assert str(city_root / "leftImg8bit" / "val" / "lindau_000001_000019_leftImg8bit.png") in msg
    assert str(missing) in msg


def test_cityscapes_missing_panoptic_png_names_every_path(tmp_path, names):
    city_root, _ = write_cityscapes_panoptic(tmp_path)
    png = (city_root / "gtFine" / "cityscapes_panoptic_val"
           / "frankfurt_000000_000294_gtFine_panoptic.png")
    png.unlink()
    names.append("city_bad")
    register_panoptic_dataset("city_bad", city_root / "leftImg8bit" / "val",
                              city_root / "gtFine" / "cityscapes_panoptic_val",
                              city_root / "gtFine" / "cityscapes_panoptic_val.json", CITY_CATS)
    with pytest.raises(DatasetFormatError) as e:
        DatasetCatalog.get("city_bad")
    msg = str(e.value)
    assert "panoptic PNG file missing" in msg and str(png) in msg
    assert str(png.parent / "frankfurt" / png.name) in msg
