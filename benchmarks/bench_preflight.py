"""Pre-flight file checks (presence + header sizes) per record, extrapolated to Objects365.

    python benchmarks/bench_preflight.py [--records 30000] [--repeats 3]

Writes ``--records`` small real files (64x48 JPEG images, and for half of the records a PNG
label of the same size) into a temporary folder, then times
``dataseg.engine.preflight.check_record_files`` on them (file cache warm: the files were just
written; a cold network filesystem is slower, see docs/results/tools.md). Prints the median
seconds, the microseconds per record, the time the 1.7M-image Objects365 train set would take
checked in full, and the time of the default sample (DATASETS.PREFLIGHT_FILES_MAX records).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OBJECTS365_TRAIN = 1_742_292  # images in Objects365 v2 train (paper's Objects365 set)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=30000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from detectron2.config import get_cfg

    from dataseg.config import add_dataseg_config
    from dataseg.engine.preflight import check_record_files

    cfg = get_cfg()
    add_dataseg_config(cfg)
    sample = cfg.DATASETS.PREFLIGHT_FILES_MAX
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        records = []
        image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        label = Image.fromarray(rng.integers(0, 20, (48, 64), dtype=np.uint8))
        for i in range(args.records):
            sub = Path(tmp) / f"{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir()
            img = sub / f"{i:07d}.jpg"
            image.save(img, quality=80)
            rec = {"file_name": str(img), "height": 48, "width": 64, "image_id": i}
            if i % 2:
                lbl = sub / f"{i:07d}.png"
                label.save(lbl)
                rec["sem_seg_file_name"] = str(lbl)
            records.append(rec)
        print(f"wrote {args.records} records' files in {time.perf_counter() - start:.1f} s "
              f"({sum(len(r) > 4 for r in records)} with a label PNG); load {os.getloadavg()}")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            problem, count, looked = check_record_files(records)
            times.append(time.perf_counter() - start)
            assert problem is None and looked == args.records, problem
    med = statistics.median(times)
    per = med / args.records
    print(f"check_record_files: median {med:.2f} s for {args.records} records "
          f"({per * 1e6:.0f} us per record; runs {', '.join(f'{t:.2f}' for t in times)})")
    full = per * OBJECTS365_TRAIN
    print(f"Objects365 train ({OBJECTS365_TRAIN} images), every record: ~{full:.0f} s; "
          f"the default sample of {sample} records: ~{per * sample:.1f} s")


if __name__ == "__main__":
    main()
