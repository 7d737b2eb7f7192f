"""Pascal VOC 2012 val -> ``pascal_voc_d2/{images,annotations_pascal20}/validation``.

SegmentationClass PNGs store palette indices 0 = background, 1..20 = classes, 255 = border.
DaTaSeg evaluates the 20 object classes with background ignored (MaskCLIP+ setting), so the
labels become 0..19 and both background and borders become 255.
"""
import shutil

import numpy as np
from prepare_common import (
    argument_parser,
    atomic_write,
    convert_all,
    dataset_root,
    read_label,
    require,
    save_png,
)


def convert_label(src, dst):
    label = read_label(src).astype(np.int32)
    valid = (label >= 1) & (label <= 20)
    if label.ndim != 2 or not np.isin(label[~valid], (0, 255)).all():
        raise ValueError(f"{src}: not a VOC SegmentationClass label map")
    out = np.full(label.shape, 255, dtype=np.uint8)
    out[valid] = label[valid] - 1
    save_png(out, dst)


def copy_image(src, dst):
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def main(argv=None):
    args = argument_parser(__doc__).parse_args(argv)
    root = dataset_root(args.root)
    voc = require(root / "VOCdevkit" / "VOC2012", "VOC2012 folder")
    ids = require(voc / "ImageSets" / "Segmentation" / "val.txt", "VOC val list").read_text()
    ids = [i.strip() for i in ids.splitlines() if i.strip()]
    out = root / "pascal_voc_d2"
    labels = [(require(voc / "SegmentationClass" / f"{i}.png", "VOC label"),
               out / "annotations_pascal20" / "validation" / f"{i}.png") for i in ids]
    images = [(require(voc / "JPEGImages" / f"{i}.jpg", "VOC image"),
               out / "images" / "validation" / f"{i}.jpg") for i in ids]
    convert_all(labels, convert_label, "VOC labels")
    convert_all(images, copy_image, "VOC images")


if __name__ == "__main__":
    main()
