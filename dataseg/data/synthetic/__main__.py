"""CLI: generate the synthetic world (if missing) and print what it contains.

    python -m dataseg.data.synthetic --root R --seed S --image-size N [--num-... K]
"""
import argparse
import time
from dataclasses import fields

from .generate import ensure_generated, is_generated, read_summary
from .params import SyntheticWorldParams
from .registration import DATASETS


def main(argv=None) -> int:
    defaults = SyntheticWorldParams()
    parser = argparse.ArgumentParser(prog="python -m dataseg.data.synthetic",
                                     description=__doc__.splitlines()[0])
    for f in fields(SyntheticWorldParams):
        kind = str if f.name in ("root", "preset") else int
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind,
                            default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    params = SyntheticWorldParams(**{f.name: getattr(args, f.name) for f in fields(
        SyntheticWorldParams)})
    cached = is_generated(params)
    start = time.perf_counter()
    world = ensure_generated(params)
    took = time.perf_counter() - start
    print(f"world: {world} ({'cached' if cached else f'generated in {took:.1f}s'})")
    splits = read_summary(world)["splits"]
    print(f"{'dataset':26s} {'split':11s} {'images':>6s} {'segments':>8s} {'instances':>9s} "
          f"{'boxes':>6s}")
    for name, (split, _) in DATASETS.items():
        c = splits[split]
        print(f"{name:26s} {split:11s} {c['images']:6d} {c['segments']:8d} "
              f"{c['instances']:9d} {c.get('boxes', 0):6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
