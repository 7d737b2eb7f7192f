"""COCO evaluation time: pycocotools vs the fast paths DaTaSeg's evaluator uses, same AP.

    python benchmarks/bench_coco_eval.py                       # both sizes below
    python benchmarks/bench_coco_eval.py --images 200 --masks 2000 --repeats 1   # quick

The fast path of ``COCOEvaluator`` is Detectron2's ``COCOeval_opt`` where Detectron2 has its
compiled ops (the main stack), and faster-coco-eval's C++ evaluator where it has not (the
legacy stack; ``dataseg.engine.d2compat.use_faster_coco_eval``). Both are timed here against
pycocotools' ``COCOeval`` (evaluate + accumulate + summarize, segm and bbox) on generated
instance sets of two sizes: Objects365-instance-like (1,000 images, ~13,000 masks) and
COCO-val-like (5,000 images, ~36,000 masks); 640x480 images, 80 classes, polygon masks turned
into RLE, one detection per ground-truth object (its polygon scaled, shifted and jittered; 20% with
another class) plus 50% false
positives, scores at random. Prints the median seconds of each path and the largest absolute
difference of its 12 summary numbers (AP, AP50, ..., AR) from pycocotools' (same AP to 1e-4 is
the requirement), and a verdict line.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

W, H, CLASSES = 640, 480, 80


def _polygon(rng, cx, cy, r):
    k = rng.integers(6, 12)
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = r * rng.uniform(0.5, 1.0, k)
    xs = np.clip(cx + radii * np.cos(angles), 0, W - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, H - 1)
    return np.stack([xs, ys], 1).ravel().tolist()


def _encode(poly):
    rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
    area = float(mask_util.area(rle))
    bbox = mask_util.toBbox(rle).tolist()
    rle["counts"] = rle["counts"].decode("ascii")
    return rle, area, bbox


def make_sets(n_images, n_masks, seed=0):
    """(ground-truth json dict, detection list) with about n_masks objects over n_images."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": W, "height": H, "file_name": f"{i + 1}.jpg"}
              for i in range(n_images)]
    per_image = rng.multinomial(n_masks, np.ones(n_images) / n_images)
    anns, dets = [], []
    for img, count in zip(images, per_image):
        for _ in range(count):
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            r = float(np.exp(rng.uniform(np.log(4), np.log(160))))
            cat = int(rng.integers(1, CLASSES + 1))
            poly = _polygon(rng, cx, cy, r)
            rle, area, bbox = _encode(poly)
            if area < 1:
                continue
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0})
            # the object's polygon scaled, shifted and its vertices jittered
            pts = np.asarray(poly).reshape(-1, 2)
            pts = (pts - (cx, cy)) * rng.uniform(0.85, 1.15) + (cx, cy) + rng.normal(0, 0.1 * r, 2)
            pts += rng.normal(0, 0.05 * r, pts.shape)
            pts = np.clip(pts, 0, (W - 1, H - 1))
            drle, _, dbox = _encode(pts.ravel().tolist())
            dcat = cat if rng.uniform() < 0.8 else int(rng.integers(1, CLASSES + 1))
            dets.append({"image_id": img["id"], "category_id": dcat, "segmentation": drle,
                         "bbox": dbox, "score": float(rng.uniform())})
        for _ in range(count // 2):  # false positives
            rle, area, bbox = _encode(_polygon(rng, rng.uniform(0, W), rng.uniform(0, H),
                                               float(rng.uniform(4, 80))))
            if area >= 1:
                dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 81)),
                             "segmentation": rle, "bbox": bbox, "score": float(rng.uniform())})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, CLASSES + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def fast_paths():
    """name -> COCOeval-like class, for the fast paths installed here."""
    paths = {}
    try:
        from detectron2 import _C
        if not getattr(_C, "DATASEG_STUB", False):
            from detectron2.evaluation.fast_eval_api import COCOeval_opt
            paths["detectron2 COCOeval_opt"] = COCOeval_opt
    except ImportError:
        pass
    try:
        from dataseg.engine.d2compat import FasterCOCOeval
        paths["faster-coco-eval"] = FasterCOCOeval
    except ImportError:
        pass
    return paths


def run(cls, gt_path, dets, iou_type):
    """Seconds for evaluate + accumulate + summarize, and the 12 summary numbers."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes([dict(d) for d in dets])
        start = time.perf_counter()
        ev = cls(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        seconds = time.perf_counter() - start
    return seconds, np.asarray(ev.stats[:12], dtype=np.float64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--masks", type=int, nargs="*", default=[13000, 36000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    paths = fast_paths()
    print(f"load average {os.getloadavg()[0]:.2f}; fast paths here: {sorted(paths)}")
    ok = True
    for n_images, n_masks in zip(args.images, args.masks):
        gt, dets = make_sets(n_images, n_masks)
        with tempfile.TemporaryDirectory() as tmp:
            gt_path = os.path.join(tmp, "gt.json")
            with open(gt_path, "w") as f:
                json.dump(gt, f)
            print(f"\n{n_images} images, {len(gt['annotations'])} masks, {len(dets)} detections")
            for iou_type in ("segm", "bbox"):
                ref_times, ref = [], None
                times = {name: [] for name in paths}
                stats = {}
                for _ in range(args.repeats):  # interleaved
                    t, ref = run(COCOeval, gt_path, dets, iou_type)
                    ref_times.append(t)
                    for name, cls in paths.items():
                        t, stats[name] = run(cls, gt_path, dets, iou_type)
                        times[name].append(t)
                base = statistics.median(ref_times)
                print(f"  {iou_type}: pycocotools {base:.2f} s (AP {100 * ref[0]:.3f})")
                for name in paths:
                    med = statistics.median(times[name])
                    diff = float(np.max(np.abs(stats[name] - ref)))
                    ok &= diff <= 1e-4
                    print(f"  {iou_type}: {name} {med:.2f} s = {med / base:.2f}x of pycocotools; "
                          f"largest |difference| of the 12 summary numbers {diff:.2e}")
    print("\nverdict:", "same AP (to 1e-4) on every path" if ok else "DIFFERENT AP on a path")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
