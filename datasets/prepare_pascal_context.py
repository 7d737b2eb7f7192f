"""Pascal Context (VOC2010 + the 459-class ``trainval.tar.gz`` of .mat label maps) ->
``pascal_ctx_d2/{images,annotations_ctx59,annotations_ctx459}/validation`` + ``labels_459.txt``.

Inputs under the root: ``VOCdevkit/VOC2010/{JPEGImages,ImageSets/Main/val.txt}`` (the 5,105
Context val images), ``pascal_context/trainval/<id>.mat`` (``LabelMap``, values 1..459) and
``pascal_context/labels.txt`` (lines ``<index>: <name>``).
- ``labels_459.txt``: the 459 names in index order, copied from the dataset's labels.txt
  (DaTaSeg ships no invented list); builtin registration reads it.
- ctx459 labels: 16-bit PNGs, value = index - 1, 65535 where no label.
- ctx59 labels: 8-bit PNGs, the 59 classes of DaTaSeg's vocabulary (matched by name) as 0..58,
  every other class 255.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
from prepare_common import (
    argument_parser,
    atomic_write,
    convert_all,
    dataset_root,
    require,
    save_png,
)


def read_labels_txt(path):
    names = {}
    for line in require(path, "Pascal Context labels.txt").read_text().splitlines():
        m = re.match(r"\s*(\d+)\s*:\s*(.+?)\s*$", line)
        if m:
            names[int(m.group(1))] = m.group(2)
    if sorted(names) != list(range(1, 460)):
        raise ValueError(f"{path}: expected indices 1..459, found {len(names)} entries")
    return [names[i] for i in range(1, 460)]


def main(argv=None):
    args = argument_parser(__doc__).parse_args(argv)
    from scipy.io import loadmat

    root = dataset_root(args.root)
    voc = require(root / "VOCdevkit" / "VOC2010", "VOC2010 folder")
    ctx_src = require(root / "pascal_context", "Pascal Context folder")
    names = read_labels_txt(ctx_src / "labels.txt")
    out = root / "pascal_ctx_d2"
    names_file = out / "labels_459.txt"
    if not names_file.exists():
        atomic_write(names_file, lambda t: Path(t).write_text("\n".join(names) + "\n"))
    vocab59 = json.loads((Path(__file__).resolve().parents[1] / "dataseg" / "data" / "vocabularies"
                          / "pascal_context_59.json").read_text())["categories"]
    lut59 = np.full(461, 255, np.uint8)
    for c in vocab59:
        if c["name"] not in names:
            raise ValueError(f"{ctx_src / 'labels.txt'} has no class '{c['name']}'")
        lut59[names.index(c["name"]) + 1] = c["id"]
    lut459 = np.full(461, 65535, np.uint16)
    lut459[1:460] = np.arange(459)

    ids = require(voc / "ImageSets" / "Main" / "val.txt", "VOC2010 val list").read_text().split()
    mats = {i: require(ctx_src / "trainval" / f"{i}.mat", "Pascal Context label") for i in ids}

    def label_map(src):
        lab = loadmat(src)["LabelMap"].astype(np.int64)
        return np.where((lab >= 1) & (lab <= 459), lab, 460)

    convert_all([(mats[i], out / "annotations_ctx459" / "validation" / f"{i}.png") for i in ids],
                lambda s, d: save_png(lut459[label_map(s)], d), "Context-459 labels")
    convert_all([(mats[i], out / "annotations_ctx59" / "validation" / f"{i}.png") for i in ids],
                lambda s, d: save_png(lut59[label_map(s)], d), "Context-59 labels")
    convert_all([(require(voc / "JPEGImages" / f"{i}.jpg", "VOC2010 image"),
                  out / "images" / "validation" / f"{i}.jpg") for i in ids],
                lambda s, d: atomic_write(d, lambda t: shutil.copyfile(s, t)), "Context images")


if __name__ == "__main__":
    main()
