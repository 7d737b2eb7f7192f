"""ADE20K panoptic val (COCO panoptic format) from the SceneParsing + instance-challenge files.

Inputs under ``<root>/ADEChallengeData2016/``:

* ``annotations/validation/*.png``: SceneParsing semantic labels, 1..150 = classes, 0 = other;
* ``annotations_instance/validation/*.png``: the instance-challenge PNGs (R = instance-challenge
  category 1..100, 0 = none; G = instance index, 0 = none);
* ``categoryMapping.txt`` (``--category-mapping``): the challenge's map from its 100 categories
  to the 150 SceneParsing classes (see ``read_category_mapping``).

Outputs (Mask2Former's layout): ``ade20k_panoptic_val/<name>.png`` (segment ids as RGB,
``panopticapi.utils.id2rgb``) and ``ade20k_panoptic_val.json`` with category ids 0..149 =
SceneParsing value - 1. One segment per stuff class present in the semantic label, one per
thing instance; thing-class pixels without an instance are void (0). Segment id =
(category id + 1) * 1000 + k (k = 0 for stuff, 1, 2, ... for instances), so a rerun rebuilds the
json from the PNGs already written.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from prepare_common import argument_parser, atomic_write, dataset_root, read_label, require, tqdm

NUM_CLASSES = 150
NUM_INSTANCE_CLASSES = 100
ID_BASE = 1000


def ade_categories():
    """[{id 0..149, name, isthing}] as dataseg/data/builtin.py registers the panoptic val set."""
    from dataseg.data.builtin import load_vocabulary

    return [{"id": k, "name": c["name"], "isthing": int(c["isthing"])}
            for k, c in enumerate(load_vocabulary("ade20k_150"))]


def read_category_mapping(path, is_thing):
    """Instance-challenge category (1..100) -> SceneParsing value (1..150).

    Expected format (placeschallenge ``instancesegmentation/categoryMapping.txt``): an optional
    header line, then one line per category with whitespace-separated integer columns
    ``<instance id> <SceneParsing150 id> [<full ADE20K id> ...]``. Anything else is an error,
    as is a map that is not one-to-one onto the 100 thing classes of ``is_thing`` (value - 1).
    """
    path = require(Path(path), "ADE20K instance category mapping (categoryMapping.txt)")
    mapping = {}
    lines = [(n, ln.split()) for n, ln in enumerate(path.read_text().splitlines(), 1)]
    lines = [(n, cols) for n, cols in lines if cols]
    for k, (n, cols) in enumerate(lines):
        try:
            ins, sem = int(cols[0]), int(cols[1]) if len(cols) > 1 else None
        except ValueError:
            if k == 0:
                continue  # header
            raise ValueError(f"{path}:{n}: expected '<instance id> <SceneParsing150 id> ...', "
                             f"got {' '.join(cols)!r}") from None
        if sem is None:
            raise ValueError(f"{path}:{n}: expected at least two integer columns")
        if not 1 <= ins <= NUM_INSTANCE_CLASSES or not 1 <= sem <= NUM_CLASSES:
            raise ValueError(f"{path}:{n}: ids out of range (instance {ins} not in 1..100 or "
                             f"SceneParsing {sem} not in 1..150)")
        if ins in mapping:
            raise ValueError(f"{path}:{n}: instance category {ins} mapped twice")
        if not is_thing[sem - 1]:
            raise ValueError(f"{path}:{n}: instance category {ins} maps to SceneParsing class "
                             f"{sem}, which is stuff in ade20k_150")
        mapping[ins] = sem
    if len(mapping) != NUM_INSTANCE_CLASSES or len(set(mapping.values())) != len(mapping):
        raise ValueError(f"{path}: expected a one-to-one map of the 100 instance categories "
                         f"onto the thing classes, got {len(mapping)} entries onto "
                         f"{len(set(mapping.values()))} classes")
    return mapping


def panoptic_ids(sem, ins, mapping, is_thing, where=""):
    """Segment-id map from a semantic label (H, W) and an instance PNG (H, W, >=3)."""
    if sem.ndim != 2 or sem.max() > NUM_CLASSES:
        raise ValueError(f"{where}: not an ADE20K-150 label map (shape {sem.shape}, "
                         f"max {sem.max()})")
    if ins.ndim != 3 or ins.shape[2] < 3 or ins.shape[:2] != sem.shape:
        raise ValueError(f"{where}: instance PNG shape {ins.shape} does not match the "
                         f"semantic label {sem.shape} (expected RGB)")
    pan = np.zeros(sem.shape, np.int32)
    for value in np.unique(sem):
        if value and not is_thing[value - 1]:
            pan[sem == value] = int(value) * ID_BASE  # category value-1 -> (cat+1)*1000 + 0
    r, g = ins[..., 0].astype(np.int32), ins[..., 1].astype(np.int32)
    key = np.where((r > 0) & (g > 0), r * 256 + g, 0)
    count = {}
    for k in np.unique(key):
        if k == 0:
            continue
        if k // 256 not in mapping:
            raise ValueError(f"{where}: instance category {k // 256} (R channel) is not in "
                             "the category mapping")
        sem_value = mapping[k // 256]
        count[sem_value] = count.get(sem_value, 0) + 1
        pan[key == k] = sem_value * ID_BASE + count[sem_value]
    return pan


def segments_info(pan, categories, where=""):
    """COCO panoptic segments (id, category_id, iscrowd, area, bbox XYWH) of a segment-id map."""
    out = []
    for sid in np.unique(pan):
        if sid == 0:
            continue
        cat = int(sid) // ID_BASE - 1
        if not 0 <= cat < len(categories):
            raise ValueError(f"{where}: segment id {sid} does not encode an ADE20K-150 class")
        mask = pan == sid
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        out.append({"id": int(sid), "category_id": categories[cat]["id"], "iscrowd": 0,
                    "area": int(mask.sum()),
                    "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1),
                             int(ys[-1] - ys[0] + 1)]})
    return out


def _save_ids(pan, path):
    from panopticapi.utils import id2rgb

    atomic_write(path, lambda tmp: Image.fromarray(id2rgb(pan)).save(tmp, format="PNG"))


def _read_ids(path):
    from panopticapi.utils import rgb2id

    with Image.open(path) as im:
        return rgb2id(np.asarray(im.convert("RGB")).astype(np.int32))


def main(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--category-mapping", default=None,
                   help="instance-challenge categoryMapping.txt "
                        "(default: <root>/ADEChallengeData2016/categoryMapping.txt)")
    args = p.parse_args(argv)
    ade = require(dataset_root(args.root) / "ADEChallengeData2016", "ADE20K folder")
    sem_dir = require(ade / "annotations" / "validation", "ADE20K annotation folder")
    ins_dir = ade / "annotations_instance" / "validation"
    out_dir, json_path = ade / "ade20k_panoptic_val", ade / "ade20k_panoptic_val.json"
    sems = sorted(sem_dir.glob("*.png"))
    if not sems:
        raise FileNotFoundError(f"missing ADE20K validation labels: no PNG in {sem_dir}")
    todo = [s for s in sems if not (out_dir / s.name).exists()]
    if not todo and json_path.exists():
        print(f"ADE20K panoptic val: 0 written, {len(sems)} already done")
        return
    categories = ade_categories()
    is_thing = [bool(c["isthing"]) for c in categories]
    if todo:
        require(ins_dir, "ADE20K instance annotation folder (annotations_instance.tar)")
        mapping = read_category_mapping(args.category_mapping or ade / "categoryMapping.txt",
                                        is_thing)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for sem_path in tqdm(sems, desc="ADE20K panoptic val", unit="file"):
        dst = out_dir / sem_path.name
        if dst.exists():
            pan = _read_ids(dst)
        else:
            ins_path = require(ins_dir / sem_path.name, "ADE20K instance annotation")
            with Image.open(ins_path) as im:
                ins = np.asarray(im)
            pan = panoptic_ids(read_label(sem_path).astype(np.int32), ins, mapping, is_thing,
                               where=str(sem_path))
            _save_ids(pan, dst)
        stem = sem_path.stem
        images.append({"id": stem, "file_name": f"{stem}.jpg", "height": int(pan.shape[0]),
                       "width": int(pan.shape[1])})
        annotations.append({"image_id": stem, "file_name": sem_path.name,
                            "segments_info": segments_info(pan, categories, str(dst))})
    data = {"images": images, "annotations": annotations, "categories": categories}
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(data)))
    print(f"ADE20K panoptic val: {len(todo)} written, {len(sems) - len(todo)} already done; "
          f"{json_path}")


if __name__ == "__main__":
    main()
