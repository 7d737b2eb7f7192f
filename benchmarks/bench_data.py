"""Data-pipeline benchmark: mapper throughput per task, and the time and peak memory to
register + load + serialize (DatasetFromList) an Objects365-sized box annotation set.

    python benchmarks/bench_data.py               # full scale: 1.7M images, ~25M boxes
    python benchmarks/bench_data.py --scale 0.05  # quick check

The O365-sized json is generated into a temp dir; loading runs in a fresh subprocess so its
max RSS (ru_maxrss) is the loader's own.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
O365_IMAGES, O365_BOXES = 1_700_000, 25_000_000


def write_o365_json(path: Path, num_images: int, num_boxes: int, seed: int = 0) -> None:
    """Streams a COCO box json of the given size (365 categories) without holding it."""
    rng = np.random.default_rng(seed)
    per_image = rng.multinomial(num_boxes, np.full(num_images, 1.0 / num_images))
    with open(path, "w") as f:
        f.write('{"categories": [')
        f.write(",".join(json.dumps({"id": i + 1, "name": f"cat{i}"}) for i in range(365)))
        f.write('], "images": [')
        for start in range(0, num_images, 100_000):
            ids = range(start, min(start + 100_000, num_images))
            f.write(("," if start else "") + ",".join(
                f'{{"id": {i + 1}, "file_name": "images/v1/patch{i % 16}/objects365_v1_{i:08d}'
                f'.jpg", "height": 512, "width": 683}}' for i in ids))
        f.write('], "annotations": [')
        img_of_box = np.repeat(np.arange(num_images), per_image)
        first = True
        for start in range(0, num_boxes, 1_000_000):
            sl = slice(start, min(start + 1_000_000, num_boxes))
            n = sl.stop - sl.start
            xy = rng.uniform(0, 400, (n, 2)).round(2)
            wh = rng.uniform(1, 250, (n, 2)).round(2)
            cat = rng.integers(1, 366, n)
            parts = [f'{{"id": {sl.start + k + 1}, "image_id": {img_of_box[sl.start + k] + 1}, '
                     f'"category_id": {cat[k]}, "bbox": [{xy[k, 0]}, {xy[k, 1]}, {wh[k, 0]}, '
                     f'{wh[k, 1]}], "iscrowd": 0, "area": {round(wh[k, 0] * wh[k, 1], 2)}}}'
                     for k in range(n)]
            f.write(("" if first else ",") + ",".join(parts))
            first = False
        f.write("]}")


def _child(json_file: str) -> None:
    """Runs in a subprocess: register, load, serialize; prints one json line."""
    from detectron2.data import DatasetCatalog, DatasetFromList

    from dataseg.data.register import register_box_dataset

    cats = [{"id": i + 1, "name": f"cat{i}"} for i in range(365)]
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    register_box_dataset("bench_o365", "/nonexistent", json_file, cats)
    t1 = time.perf_counter()
    dicts = DatasetCatalog.get("bench_o365")
    t2 = time.perf_counter()
    n_boxes = int(sum(len(d["boxes"]) for d in dicts))
    n_images = len(dicts)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ds = DatasetFromList(dicts, copy=False, serialize=True)
    del dicts
    t3 = time.perf_counter()
    _ = ds[len(ds) // 2]
    print(json.dumps({"images": n_images, "boxes": n_boxes, "register_s": t1 - t0,
                      "load_s": t2 - t1, "serialize_s": t3 - t2,
                      "serialized_mb": ds._lst.nbytes / 2**20 + ds._addr.nbytes / 2**20,
                      "max_rss_after_load_mb": rss_loaded / 1024,
                      "rss_imports_mb": rss_imports / 1024,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_o365(scale: float) -> dict:
    n_img, n_box = max(1, int(O365_IMAGES * scale)), max(1, int(O365_BOXES * scale))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "o365_boxes.json"
        t0 = time.perf_counter()
        write_o365_json(path, n_img, n_box)
        gen_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True,
                             capture_output=True, text=True, cwd=str(REPO))
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res.update(scale=scale, json_mb=path.stat().st_size / 2**20, generate_s=gen_s)
    return res


def bench_mappers(repeats: int, images: int) -> dict:
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from data_fixtures import (
        write_box_dataset,
        write_instance_dataset,
        write_panoptic_dataset,
        write_semantic_dataset,
    )
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from dataseg.config import add_dataseg_config
    from dataseg.data.mappers import build_train_mapper
    from dataseg.data.register import (
        register_box_dataset,
        register_instance_dataset,
        register_panoptic_dataset,
        register_semantic_dataset,
    )

    cfg = add_dataseg_config(get_cfg())
    cfg.INPUT.FORMAT = "RGB"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        size = (480, 640)
        s = write_semantic_dataset(Path(tmp) / "s", n=images, size=size, num_classes=20)
        register_semantic_dataset("bm_sem", s["image_root"], s["sem_seg_root"], s["class_names"])
        p = write_panoptic_dataset(Path(tmp) / "p", n=images, size=size)
        register_panoptic_dataset("bm_pan", p["image_root"], p["panoptic_root"],
                                  p["panoptic_json"], p["categories"])
        i = write_instance_dataset(Path(tmp) / "i", n=images, size=size)
        register_instance_dataset("bm_inst", i["image_root"], i["json_file"], i["categories"])
        b = write_box_dataset(Path(tmp) / "b", n=images, boxes_per_image=15, size=size)
        register_box_dataset("bm_box", b["image_root"], b["json_file"], b["categories"])
        for name, preset in [("bm_sem", "resize_crop"), ("bm_pan", "lsj"), ("bm_inst", "lsj"),
                             ("bm_box", "lsj")]:
            cfg.DATASETS.TRAIN = (name,)
            cfg.DATASETS.TRAIN_AUGMENTATIONS = [preset]
            mapper = build_train_mapper(cfg, name)
            recs = DatasetCatalog.get(name)
            rates = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for r in recs:
                    mapper(r)
                rates.append(len(recs) / (time.perf_counter() - t0))
            results[f"{name[3:]} ({preset})"] = statistics.median(rates)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of Objects365 size")
    ap.add_argument("--repeats", type=int, default=5, help="mapper timing repeats (median)")
    ap.add_argument("--images", type=int, default=8, help="images per mapper benchmark")
    ap.add_argument("--skip-mappers", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.skip_mappers:
        print(f"mapper throughput (640x480 input, 1 process, median of {args.repeats}):")
        for k, v in bench_mappers(args.repeats, args.images).items():
            print(f"  {k:24s} {v:7.1f} img/s")
    res = bench_o365(args.scale)
    print(f"Objects365-sized box set at scale {res['scale']}: {res['images']} images, "
          f"{res['boxes']} boxes, json {res['json_mb']:.0f} MB (generated in "
          f"{res['generate_s']:.0f} s)")
    print(f"  register {res['register_s'] * 1e3:.2f} ms; load {res['load_s']:.1f} s; "
          f"serialize (DatasetFromList) {res['serialize_s']:.1f} s -> "
          f"{res['serialized_mb']:.0f} MB")
    print(f"  max RSS after load {res['max_rss_after_load_mb']:.0f} MB; "
          f"max RSS overall {res['max_rss_mb']:.0f} MB (of which imports "
          f"{res['rss_imports_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
