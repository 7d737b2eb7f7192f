"""COCO panoptic 2017 -> 133-class semantic labels (``coco/panoptic_semseg_<split>2017``).

Each pixel gets the contiguous id (DaTaSeg's COCO vocabulary order: 80 things, then 53 stuff,
as Mask2Former) of its panoptic segment's category; unlabelled pixels get 255.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from prepare_common import argument_parser, convert_all, dataset_root, require, save_png


def coco_contiguous_ids():
    path = (Path(__file__).resolve().parents[1] / "dataseg" / "data" / "vocabularies"
            / "coco_panoptic_133.json")
    cats = json.loads(require(path, "COCO vocabulary").read_text())["categories"]
    return {c["id"]: k for k, c in enumerate(cats)}


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def make_converter(segments_by_png, id_map, json_path):
    def convert(src, dst):
        with Image.open(src) as im:
            seg = rgb2id(np.asarray(im.convert("RGB")))
        out = np.full(seg.shape, 255, dtype=np.uint8)
        for s in segments_by_png[Path(src).name]:
            if s["category_id"] not in id_map:
                raise ValueError(f"{json_path}: {Path(src).name} segment {s['id']}: unknown "
                                 f"category_id {s['category_id']}")
            out[seg == s["id"]] = id_map[s["category_id"]]
        save_png(out, dst)
    return convert


def main(argv=None):
    args = argument_parser(__doc__).parse_args(argv)
    coco = require(dataset_root(args.root) / "coco", "COCO folder")
    id_map = coco_contiguous_ids()
    for split in ("val2017", "train2017"):
        json_path = coco / "annotations" / f"panoptic_{split}.json"
        if split == "train2017" and not json_path.exists():
            print(f"skipping {split}: {json_path} not found")
            continue
        data = json.loads(require(json_path, "COCO panoptic json").read_text())
        png_dir = require(coco / f"panoptic_{split}", "COCO panoptic PNG folder")
        segments = {a["file_name"]: a["segments_info"] for a in data["annotations"]}
        out_dir = coco / f"panoptic_semseg_{split}"
        jobs = []
        for name in sorted(segments):
            jobs.append((require(png_dir / name, "panoptic PNG"), out_dir / name))
        convert_all(jobs, make_converter(segments, id_map, json_path), f"COCO {split}")


if __name__ == "__main__":
    main()
