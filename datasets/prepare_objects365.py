"""Objects365 v2: checks the layout and prepares the DaTaSeg O365 instance benchmark.

Box data is used as downloaded (``objects365/images/{train,val}``,
``objects365/annotations/zhiyuan_objv2_{train,val}.json``); this script checks that the files
are there and that the json categories match DaTaSeg's vocabulary (ids 1..365).

``o365_instance_seg_val.json`` (1,000 val images, 12,836 masks) also lists the objects the
raters skipped. How the release marks them is not documented in the paper; this script treats
an annotation as skipped when it has ``iscrowd: 1``, a truthy ``ignore`` key, or no/empty
``segmentation``, and writes ``o365_instance_seg_val_d2.json`` where each skipped annotation is
``iscrowd: 1`` with its box as the region (COCO evaluation then ignores predictions on it).
The rule is dataseg.data.loading's ``as_ignore_region``, the one the instance loader applies
to mask-less annotations of any instance json, so the original json can be registered as is
too.
"""
import json

from prepare_common import argument_parser, atomic_write, dataset_root, require

from dataseg.data.loading import as_ignore_region, is_maskless


def normalise_instance_json(data: dict) -> dict:
    out_anns = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0) or is_maskless(ann):
            ann = as_ignore_region(ann)
        else:
            ann = dict(ann, iscrowd=0)
        out_anns.append(ann)
    return dict(data, annotations=out_anns)


def check_categories(json_path, data, vocab):
    ids = {c["id"]: c["name"] for c in data.get("categories", [])}
    missing = sorted(set(c["id"] for c in vocab) - set(ids))
    if missing or len(ids) != len(vocab):
        raise ValueError(f"{json_path}: categories do not match Objects365 v2 (ids 1..365); "
                         f"missing ids {missing[:10]}")
    renamed = [(i, ids[i], c["name"]) for i in ids for c in vocab if c["id"] == i
               and ids[i].lower() != c["name"].lower()]
    for i, theirs, ours in renamed[:20]:
        print(f"note: category {i} is '{theirs}' in {json_path.name}, '{ours}' in DaTaSeg")


def main(argv=None):
    p = argument_parser(__doc__)
    p.add_argument("--skip-box-json", action="store_true",
                   help="do not parse the (large) box jsons, only check they exist")
    args = p.parse_args(argv)
    from dataseg.data.builtin import load_vocabulary
    from dataseg.data.columnar import ensure_box_cache

    vocab = load_vocabulary("objects365_v2")
    o365 = require(dataset_root(args.root) / "objects365", "Objects365 folder")
    ann_dir = require(o365 / "annotations", "Objects365 annotation folder")
    for split in ("train", "val"):
        require(o365 / "images" / split, f"Objects365 {split} image folder")
        json_path = require(ann_dir / f"zhiyuan_objv2_{split}.json", "Objects365 json")
        if not args.skip_box_json:
            check_categories(json_path, json.loads(json_path.read_text()), vocab)
            # Columnar hook (issue 12): parse the box json once into its memory-mapped cache.
            print(f"columnar cache: {ensure_box_cache(str(json_path)).path}")
    src = ann_dir / "o365_instance_seg_val.json"
    dst = ann_dir / "o365_instance_seg_val_d2.json"
    if not src.exists():
        print(f"skipping the instance benchmark: {src} not found")
    elif dst.exists():
        print(f"{dst} already done")
    else:
        data = normalise_instance_json(json.loads(src.read_text()))
        skipped = sum(a["iscrowd"] for a in data["annotations"])
        atomic_write(dst, lambda tmp: open(tmp, "w").write(json.dumps(data)))
        print(f"wrote {dst}: {len(data['annotations']) - skipped} masks, {skipped} ignored")


if __name__ == "__main__":
    main()
