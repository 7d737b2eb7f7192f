"""Writers of tiny datasets in the real on-disk formats (importable by any test).

Usage from another test directory::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from data_fixtures import write_semantic_dataset

Each writer returns a dict with the paths to pass to ``dataseg.data.register`` and the ground
truth it wrote (label arrays, segment maps, boxes) so tests can check mapper outputs exactly.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util


def _image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_semantic_dataset(root, n=3, size=(24, 32), num_classes=4, ignore_label=255, seed=0):
    """ADE-style: <root>/images/<stem>.jpg and <root>/labels/<stem>.png (value = class id)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    labels = {}
    for i in range(n):
        stem = f"img_{i:03d}"
        label = np.zeros((h, w), np.uint8)
        # Vertical bands of classes + an ignore block: every class and ignore are present.
        for c in range(num_classes):
            label[:, c * w // num_classes:(c + 1) * w // num_classes] = (c + i) % num_classes
        label[: h // 4, : w // 4] = ignore_label
        Image.fromarray(_image(rng, h, w)).save(root / "images" / f"{stem}.jpg", quality=95)
        Image.fromarray(label).save(root / "labels" / f"{stem}.png")
        labels[stem] = label
    return {"image_root": str(root / "images"), "sem_seg_root": str(root / "labels"),
            "class_names": [["c0", "class zero"]] + [f"c{c}" for c in range(1, num_classes)],
            "labels": labels, "ignore_label": ignore_label}


PANOPTIC_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1, "synonyms": ["automobile"]},
    {"id": 17, "name": "sky", "isthing": 0},
    {"id": 40, "name": "grass", "isthing": 0},
]


def id2rgb(ids):
    """COCO panoptic id -> RGB (the format's own encoding: id = R + 256 G + 256^2 B)."""
    from panopticapi.utils import id2rgb as _id2rgb

    return _id2rgb(ids)


def write_panoptic_dataset(root, n=2, size=(32, 40), seed=0, crowd=True, id_base=1000):
    """COCO panoptic: images/*.jpg, panoptic/*.png (id2rgb), panoptic.json with segments_info.
    Segment ids are id_base * (image + 1) + 300 + k (id_base >= 65536 uses the blue channel)."""
    root = Path(root)
    for d in ("images", "panoptic"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    images, anns, maps = [], [], {}
    for i in range(n):
        pan = np.zeros((h, w), np.int64)          # 0 = void
        segs = []
        # sky top half, grass bottom half, two people, one car; ids > 255 to exercise RGB.
        layout = [(17, (0, 0, w, h // 2)), (40, (0, h // 2, w, h)), (1, (2, 4, 10, 20)),
                  (1, (12, 6, 20, 26)), (3, (24, 18, 36, 30))]
        for k, (cat, (x0, y0, x1, y1)) in enumerate(layout):
            seg_id = id_base * (i + 1) + 300 + k
            pan[y0:y1, x0:x1] = seg_id
            segs.append({"id": seg_id, "category_id": cat, "iscrowd": int(crowd and k == 4),
                         "area": int((pan == seg_id).sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
        pan[h - 2:, :3] = 0  # some void
        for s in segs:
            s["area"] = int((pan == s["id"]).sum())
        stem = f"{i:06d}"
        Image.fromarray(_image(rng, h, w)).save(root / "images" / f"{stem}.jpg", quality=95)
        Image.fromarray(id2rgb(pan)).save(root / "panoptic" / f"{stem}.png")
        images.append({"id": i + 1, "file_name": f"{stem}.jpg", "height": h, "width": w})
        anns.append({"image_id": i + 1, "file_name": f"{stem}.png", "segments_info": segs})
        maps[i + 1] = pan
    json_path = root / "panoptic.json"
    json_path.write_text(json.dumps({"images": images, "annotations": anns,
                                     "categories": PANOPTIC_CATEGORIES}))
    return {"image_root": str(root / "images"), "panoptic_root": str(root / "panoptic"),
            "panoptic_json": str(json_path), "categories": PANOPTIC_CATEGORIES, "maps": maps,
            "annotations": anns}


BOX_CATEGORIES = [{"id": 5, "name": "person", "isthing": 1},
                  {"id": 9, "name": "dog", "isthing": 1},
                  {"id": 12, "name": "chair", "isthing": 1}]


def write_instance_dataset(root, n=2, size=(30, 40), seed=0):
    """O365-instance-style COCO json: polygons for even annotations, RLE (compressed or
    uncompressed) for odd ones, one crowd RLE per image. Returns the GT masks per image."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    images, anns, gt = [], [], {}
    ann_id = 100
    for i in range(n):
        fn = f"patch0/obj_{i}.jpg"
        (root / "images" / "patch0").mkdir(exist_ok=True)
        Image.fromarray(_image(rng, h, w)).save(root / "images" / fn, quality=95)
        images.append({"id": 10 + i, "file_name": fn, "height": h, "width": w})
        gt[10 + i] = []
        objs = [(5, (2, 3, 15, 18)), (9, (18, 5, 36, 25)), (12, (5, 20, 12, 28))]
        for k, (cat, (x0, y0, x1, y1)) in enumerate(objs):
            m = np.zeros((h, w), np.uint8)
            if k % 2 == 0:
                poly = [x0, y0, x1, y0, x1, y1, x0, y1]
                segm = [poly]
                m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(segm, h, w)))
            else:
                m[y0:y1, x0:x1] = 1
                m[y0:y0 + 3, x0:x0 + 3] = 0  # not a rectangle: tight box still its bbox
                rle = mask_util.encode(np.asfortranarray(m))
                if i % 2 == 0:
                    segm = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:  # uncompressed RLE, as COCO stores crowd masks
                    flat = m.flatten(order="F")
                    runs, cur, cnt = [], 0, 0
                    for v in flat:
                        if v == cur:
                            cnt += 1
                        else:
                            runs.append(cnt)
                            cur, cnt = v, 1
                    runs.append(cnt)
                    segm = {"size": [h, w], "counts": [int(r) for r in runs]}
            anns.append({"id": ann_id, "image_id": 10 + i, "category_id": cat,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
                         "segmentation": segm, "area": float(m.sum())})
            gt[10 + i].append((BOX_CATEGORIES.index(next(c for c in BOX_CATEGORIES
                                                         if c["id"] == cat)), m.astype(bool)))
            ann_id += 1
        crowd = np.zeros((h, w), np.uint8)
        crowd[0:2, 0:2] = 1
        rle = mask_util.encode(np.asfortranarray(crowd))
        anns.append({"id": ann_id, "image_id": 10 + i, "category_id": 5, "bbox": [0, 0, 2, 2],
                     "iscrowd": 1, "segmentation": {"size": rle["size"],
                                                    "counts": rle["counts"].decode()}})
        ann_id += 1
    json_path = root / "instances.json"
    json_path.write_text(json.dumps({"images": images, "annotations": anns,
                                     "categories": BOX_CATEGORIES}))
    return {"image_root": str(root / "images"), "json_file": str(json_path),
            "categories": BOX_CATEGORIES, "masks": gt}


def box_json_dict(num_images, boxes_per_image, size=(30, 40), seed=0, categories=BOX_CATEGORIES):
    """An Objects365-style box json as a Python dict (used by tests and the benchmark)."""
    rng = np.random.default_rng(seed)
    h, w = size
    images = [{"id": i + 1, "file_name": f"objects365_v1_{i:08d}.jpg", "height": h, "width": w}
              for i in range(num_images)]
    anns, ann_id = [], 1
    cat_ids = [c["id"] for c in categories]
    for i in range(num_images):
        for _ in range(boxes_per_image):
            x0, y0 = float(rng.integers(0, w - 5)), float(rng.integers(0, h - 5))
            bw, bh = float(rng.integers(1, w - x0)), float(rng.integers(1, h - y0))
            anns.append({"id": ann_id, "image_id": i + 1, "category_id": int(rng.choice(cat_ids)),
                         "bbox": [x0, y0, bw, bh], "iscrowd": 0, "area": bw * bh})
            ann_id += 1
    return {"images": images, "annotations": anns, "categories": categories}


def write_box_dataset(root, n=3, boxes_per_image=4, size=(30, 40), seed=0, write_images=True):
    """Objects365-style: images/*.jpg + a COCO json with boxes only."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    data = box_json_dict(n, boxes_per_image, size, seed)
    if write_images:
        rng = np.random.default_rng(seed)
        for img in data["images"]:
            Image.fromarray(_image(rng, *size)).save(root / "images" / img["file_name"])
    json_path = root / "boxes.json"
    json_path.write_text(json.dumps(data))
    return {"image_root": str(root / "images"), "json_file": str(json_path),
            "categories": BOX_CATEGORIES, "data": data}
