"""Data-pipeline benchmark: mapper throughput per task, and an Objects365-sized box set
loaded BEFORE (json path + DatasetFromList serialization) and AFTER (columnar cache: cold
build, warm load, one pass, summed PSS of N ranks that each open it and iterate over it).

    python benchmarks/bench_data.py               # full scale: 1.7M images, ~25M boxes
    python benchmarks/bench_data.py --scale 0.05  # quick check
    python benchmarks/bench_data.py --skip-mappers --json /tmp/o365.json  # keep the json

The O365-sized json is generated into a temp dir (or --json); every load runs in a fresh
subprocess so its max RSS (ru_maxrss) is its own; rank PSS is read from
/proc/PID/smaps_rollup while all ranks are alive.
"""
import argparse
import json
import os
import pickle
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


def _import_floor() -> float:
    """Imports what every child needs (torch, detectron2, dataseg's data layer) and returns the
    max RSS so far: the import floor, measured the same way in every child, so that what comes
    after it is the dataset's own share."""
    import detectron2.data  # noqa: F401

    import dataseg.data.columnar  # noqa: F401
    import dataseg.data.register  # noqa: F401

    return _rss_mb()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _register(json_file: str) -> None:
    from dataseg.data.register import register_box_dataset

    cats = [{"id": i + 1, "name": f"cat{i}"} for i in range(365)]
    register_box_dataset("bench_o365", "/nonexistent", json_file, cats)


def _iterate(dicts) -> int:
    """Touches every record's boxes, as a pass of the sampler over the dataset would."""
    n = 0
    for d in dicts:
        n += len(d["boxes"])
    return n


def _child_json(json_file: str) -> None:
    """BEFORE (json path, cache off): register, load, serialize (DatasetFromList); one json line."""
    os.environ["DATASEG_COLUMNAR_CACHE"] = "0"
    from detectron2.data import DatasetCatalog, DatasetFromList

    rss_imports = _import_floor()
    _register(json_file)
    t1 = time.perf_counter()
    dicts = DatasetCatalog.get("bench_o365")
    t2 = time.perf_counter()
    n_boxes = int(sum(len(d["boxes"]) for d in dicts))
    n_images = len(dicts)
    rss_loaded = _rss_mb()
    ds = DatasetFromList(dicts, copy=False, serialize=True)
    t3 = time.perf_counter()
    # what DatasetFromList(serialize=True) holds: each record pickled, plus an int64 offset each
    serialized = sum(len(pickle.dumps(d, protocol=-1)) for d in dicts) + 8 * len(dicts)
    del dicts
    _ = ds[len(ds) // 2]
    print(json.dumps({"images": n_images, "boxes": n_boxes, "load_s": t2 - t1,
                      "serialize_s": t3 - t2,
                      "serialized_mb": serialized / 2**20,
                      "max_rss_after_load_mb": rss_loaded, "rss_imports_mb": rss_imports,
                      "max_rss_mb": _rss_mb()}))


def _child_columnar(json_file: str, iterate: bool) -> None:
    """AFTER (columnar cache): register + DatasetCatalog.get (builds the cache when absent), then
    optionally one pass over all records; one json line."""
    from detectron2.data import DatasetCatalog

    rss_imports = _import_floor()
    _register(json_file)
    t0 = time.perf_counter()
    ds = DatasetCatalog.get("bench_o365")
    t1 = time.perf_counter()
    out = {"images": len(ds), "type": type(ds).__name__, "load_s": t1 - t0,
           "rss_imports_mb": rss_imports, "max_rss_after_load_mb": _rss_mb()}
    if iterate:
        out["boxes"] = _iterate(ds)
        out["iterate_s"] = time.perf_counter() - t1
    out["max_rss_mb"] = _rss_mb()
    with open("/proc/self/status") as f:  # now: anonymous (own) vs file-backed (shared) pages
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0].lower() + "_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(out))


def _child_rank(json_file: str, with_data: bool) -> None:
    """One 'rank': imports (the same in both kinds), opens the dataset and iterates over it (or
    not: import only), says 'ready' and waits on stdin so that the parent can read every rank's
    PSS at one moment."""
    from detectron2.data import DatasetCatalog

    _import_floor()
    if with_data:
        _register(json_file)
        _iterate(DatasetCatalog.get("bench_o365"))
    print("ready", flush=True)
    sys.stdin.readline()


def _smaps_mb(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0]) / 1024
    return out


def _ranks_pss(json_file: str, n: int, with_data: bool, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child-rank", json_file] + ([] if with_data else
                                                                   ["--no-data"])
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=str(REPO), env=env) for _ in range(n)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"rank child failed (exit {p.wait()})")
        wall = time.perf_counter() - t0
        mem = [_smaps_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
        for p in procs:
            p.wait()
    return {"pss_sum_mb": sum(m["pss"] for m in mem), "rss_max_mb": max(m["rss"] for m in mem),
            "wall_s": wall}


def _run_child(args: list, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__] + args, check=True, capture_output=True,
                         text=True, cwd=str(REPO), env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_o365(scale: float, json_path: str = None, ranks: int = 8, skip_json: bool = False):
    """Before (json path) and after (columnar cache: cold build, warm load, ranks) side by side
    on one generated json; every measurement in a fresh subprocess."""
    n_img, n_box = max(1, int(O365_IMAGES * scale)), max(1, int(O365_BOXES * scale))
    with tempfile.TemporaryDirectory() as tmp:
        gen_s = None
        path = Path(json_path) if json_path else Path(tmp) / "o365_boxes.json"
        if not path.exists():
            t0 = time.perf_counter()
            write_o365_json(path, n_img, n_box)
            gen_s = time.perf_counter() - t0
        env = dict(os.environ, DATASEG_CACHE_DIR=str(Path(tmp) / "cache"),
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = {"scale": scale, "json_mb": path.stat().st_size / 2**20, "generate_s": gen_s}
        if not skip_json:
            res["before"] = _run_child(["--child-json", str(path)], env)
        res["cold"] = _run_child(["--child-columnar", str(path)], env)
        res["warm"] = _run_child(["--child-columnar", str(path), "--iterate"], env)
        cache = list((Path(tmp) / "cache").glob("*.dtsgcol"))
        res["cache_mb"] = cache[0].stat().st_size / 2**20
        res["ranks"] = ranks
        res["ranks_imports"] = _ranks_pss(str(path), ranks, False, env)
        res["ranks_data"] = _ranks_pss(str(path), ranks, True, env)
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
    ap.add_argument("--json", help="use (or generate once into) this json instead of a temp one")
    ap.add_argument("--ranks", type=int, default=8, help="processes for the PSS measurement")
    ap.add_argument("--skip-json-path", action="store_true",
                    help="do not measure the json path (before)")
    ap.add_argument("--repeats", type=int, default=5, help="mapper timing repeats (median)")
    ap.add_argument("--images", type=int, default=8, help="images per mapper benchmark")
    ap.add_argument("--skip-mappers", action="store_true")
    ap.add_argument("--child-json", help=argparse.SUPPRESS)
    ap.add_argument("--child-columnar", help=argparse.SUPPRESS)
    ap.add_argument("--child-rank", help=argparse.SUPPRESS)
    ap.add_argument("--iterate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-data", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_json:
        return _child_json(args.child_json)
    if args.child_columnar:
        return _child_columnar(args.child_columnar, args.iterate)
    if args.child_rank:
        return _child_rank(args.child_rank, not args.no_data)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.skip_mappers:
        print(f"mapper throughput (640x480 input, 1 process, median of {args.repeats}):")
        for k, v in bench_mappers(args.repeats, args.images).items():
            print(f"  {k:24s} {v:7.1f} img/s")
    res = bench_o365(args.scale, args.json, args.ranks, args.skip_json_path)
    c, w = res["cold"], res["warm"]
    gen = "" if res["generate_s"] is None else f", generated in {res['generate_s']:.0f} s"
    print(f"Objects365-sized box set: {c['images']} images, {w['boxes']} boxes (non-crowd), "
          f"json {res['json_mb']:.0f} MB{gen}")
    print(json.dumps(res))
    b = res.get("before")
    if b:
        print(f"  BEFORE json path: load {b['load_s']:.1f} s, peak RSS {b['max_rss_mb']:.0f} MB "
              f"(after load {b['max_rss_after_load_mb']:.0f} MB, imports "
              f"{b['rss_imports_mb']:.0f} MB); DatasetFromList serialize {b['serialize_s']:.1f} s "
              f"-> {b['serialized_mb']:.0f} MB per process; {res['ranks']} ranks would hold "
              f">= {res['ranks'] * b['max_rss_mb'] / 1024:.1f} GB at peak ({res['ranks']} x one "
              f"rank's peak; not run)")
    print(f"  AFTER columnar cache ({res['cache_mb']:.0f} MB file): cold build {c['load_s']:.1f} s"
          f" (peak RSS {c['max_rss_mb']:.0f} MB); warm load {w['load_s']:.3f} s; one pass over "
          f"all records {w['iterate_s']:.1f} s; rank peak RSS {w['max_rss_mb']:.0f} MB (imports "
          f"{w['rss_imports_mb']:.0f} MB)")
    ri, rd = res["ranks_imports"], res["ranks_data"]
    share = rd["pss_sum_mb"] - ri["pss_sum_mb"]
    print(f"  {res['ranks']} ranks, summed PSS: imports only {ri['pss_sum_mb']:.0f} MB; open + "
          f"iterate {rd['pss_sum_mb']:.0f} MB (dataset's share {share:.0f} MB); max RSS of a "
          f"rank {rd['rss_max_mb']:.0f} MB")
    # the targets of issue 12, for the process total and for the data layer's own share
    own = w["max_rss_mb"] - w["rss_imports_mb"]
    met = {True: "met", False: "NOT met"}
    print(f"  targets: rank peak RSS < 1024 MB: total {w['max_rss_mb']:.0f} MB "
          f"{met[w['max_rss_mb'] < 1024]}; import floor (torch, detectron2, dataseg) "
          f"{w['rss_imports_mb']:.0f} MB + the dataset's own share {own:.0f} MB "
          f"{met[own < 1024]}")
    print(f"           {res['ranks']} ranks summed PSS < 2048 MB: total {rd['pss_sum_mb']:.0f} "
          f"MB {met[rd['pss_sum_mb'] < 2048]}; import floor {ri['pss_sum_mb']:.0f} MB + the "
          f"dataset's own share {share:.0f} MB {met[share < 2048]}")
    if b:
        print(f"  ratios: load {b['load_s'] / w['load_s']:.0f}x faster warm, "
              f"{b['load_s'] / c['load_s']:.1f}x faster cold; peak RSS "
              f"{b['max_rss_mb'] / w['max_rss_mb']:.1f}x lower per rank")


if __name__ == "__main__":
    main()
