"""Cityscapes panoptic (COCO panoptic format) from the official gtFine download.

Input: ``<root>/cityscapes/gtFine/<split>/<city>/*_gtFine_instanceIds.png`` (value =
labelId * 1000 + instance for instance-labelled pixels of classes with instances, else the
labelId). Output, in the layout of cityscapesscripts' ``createPanopticImgs`` (so it is not
needed): ``gtFine/cityscapes_panoptic_<split>/<city>_<seq>_<frame>_gtFine_panoptic.png`` (RGB,
``panopticapi.utils.id2rgb``) and ``gtFine/cityscapes_panoptic_<split>.json`` (image ids
``<city>_<seq>_<frame>``, image names ``..._leftImg8bit.png``, category ids = label ids).

Segment id = the instanceIds value. Pixels of the 19 evaluation classes keep it; every other
label (void, ignored in evaluation) becomes 0. A thing-class value below 1000 (a crowd group
without instance) is a segment with ``iscrowd: 1``.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from prepare_common import argument_parser, atomic_write, dataset_root, read_label, require, tqdm

# The 19 evaluation labels of the official Cityscapes label table (cityscapesscripts'
# labels.py: ignoreInEval False): label id -> (name, category, hasInstances, color).
EVAL_LABELS = {
    7: ("road", "flat", 0, (128, 64, 128)),
    8: ("sidewalk", "flat", 0, (244, 35, 232)),
    11: ("building", "construction", 0, (70, 70, 70)),
    12: ("wall", "construction", 0, (102, 102, 156)),
    13: ("fence", "construction", 0, (190, 153, 153)),
    17: ("pole", "object", 0, (153, 153, 153)),
    19: ("traffic light", "object", 0, (250, 170, 30)),
    20: ("traffic sign", "object", 0, (220, 220, 0)),
    21: ("vegetation", "nature", 0, (107, 142, 35)),
    22: ("terrain", "nature", 0, (152, 251, 152)),
    23: ("sky", "sky", 0, (70, 130, 180)),
    24: ("person", "human", 1, (220, 20, 60)),
    25: ("rider", "human", 1, (255, 0, 0)),
    26: ("car", "vehicle", 1, (0, 0, 142)),
    27: ("truck", "vehicle", 1, (0, 0, 70)),
    28: ("bus", "vehicle", 1, (0, 60, 100)),
    31: ("train", "vehicle", 1, (0, 80, 100)),
    32: ("motorcycle", "vehicle", 1, (0, 0, 230)),
    33: ("bicycle", "vehicle", 1, (119, 11, 32)),
}
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
PANOPTIC_SUFFIX = "_gtFine_panoptic.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


def categories():
    return [{"id": i, "name": n, "supercategory": sc, "isthing": th, "color": list(col)}
            for i, (n, sc, th, col) in EVAL_LABELS.items()]


def _label(value: int) -> int:
    return value // 1000 if value >= 1000 else value


def panoptic_ids(ids, where=""):
    """instanceIds map -> segment-id map (evaluation labels kept, the rest 0)."""
    if ids.ndim != 2:
        raise ValueError(f"{where}: not a Cityscapes instanceIds map (shape {ids.shape})")
    pan = np.zeros(ids.shape, np.int32)
    for v in np.unique(ids):
        if _label(int(v)) in EVAL_LABELS:
            pan[ids == v] = v
    return pan


def segments_info(pan, where=""):
    out = []
    for sid in np.unique(pan):
        if sid == 0:
            continue
        label = _label(int(sid))
        if label not in EVAL_LABELS:
            raise ValueError(f"{where}: segment id {sid} is not an evaluation label")
        mask = pan == sid
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        out.append({"id": int(sid), "category_id": label,
                    "iscrowd": int(sid < 1000 and EVAL_LABELS[label][2] == 1),
                    "area": int(mask.sum()),
                    "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1),
                             int(ys[-1] - ys[0] + 1)]})
    return out


def _save_ids(rgb, path):
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def main(argv=None):
    from panopticapi.utils import id2rgb, rgb2id

    p = argument_parser(__doc__)
    p.add_argument("--split", default="val", choices=("train", "val"),
                   help="gtFine split (default: val, the one DaTaSeg registers)")
    args = p.parse_args(argv)
    gt = require(dataset_root(args.root) / "cityscapes" / "gtFine", "Cityscapes gtFine folder")
    src_dir = require(gt / args.split, "Cityscapes gtFine split folder")
    out_dir = gt / f"cityscapes_panoptic_{args.split}"
    json_path = gt / f"cityscapes_panoptic_{args.split}.json"
    srcs = sorted(src_dir.glob(f"*/*{INSTANCE_SUFFIX}"), key=lambda q: q.name)
    if not srcs:
        raise FileNotFoundError(f"missing Cityscapes instance labels: no "
                                f"<city>/*{INSTANCE_SUFFIX} in {src_dir}")
    todo = [s for s in srcs if not (out_dir / (s.name[:-len(INSTANCE_SUFFIX)]
                                               + PANOPTIC_SUFFIX)).exists()]
    desc = f"Cityscapes panoptic {args.split}"
    if not todo and json_path.exists():
        print(f"{desc}: 0 written, {len(srcs)} already done")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for src in tqdm(srcs, desc=desc, unit="file"):
        frame = src.name[:-len(INSTANCE_SUFFIX)]
        dst = out_dir / (frame + PANOPTIC_SUFFIX)
        if dst.exists():
            with Image.open(dst) as im:
                pan = rgb2id(np.asarray(im.convert("RGB")).astype(np.int32))
        else:
            pan = panoptic_ids(read_label(src).astype(np.int32), str(src))
            _save_ids(id2rgb(pan), dst)
        images.append({"id": frame, "file_name": frame + IMAGE_SUFFIX,
                       "height": int(pan.shape[0]), "width": int(pan.shape[1])})
        annotations.append({"image_id": frame, "file_name": dst.name,
                            "segments_info": segments_info(pan, str(dst))})
    data = {"images": images, "annotations": annotations, "categories": categories()}
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(data)))
    print(f"{desc}: {len(todo)} written, {len(srcs) - len(todo)} already done; {json_path}")


if __name__ == "__main__":
    main()
