"""ADE20K SceneParsing (ADEChallengeData2016) -> Detectron2 semantic labels.

ADE's PNGs store 0 = "other" and 1..150 = classes; Detectron2/Mask2Former expect 0..149 with
255 ignored: ``annotations/<split>/*.png`` -> ``annotations_detectron2/<split>/*.png``.
"""
import numpy as np
from prepare_common import argument_parser, convert_all, dataset_root, read_label, require, save_png


def convert(src, dst):
    label = read_label(src).astype(np.int32)
    if label.ndim != 2 or label.max() > 150:
        raise ValueError(f"{src}: not an ADE20K-150 label map (shape {label.shape}, "
                         f"max {label.max()})")
    out = label - 1
    out[label == 0] = 255
    save_png(out.astype(np.uint8), dst)


def main(argv=None):
    args = argument_parser(__doc__).parse_args(argv)
    ade = require(dataset_root(args.root) / "ADEChallengeData2016", "ADE20K folder")
    for split in ("training", "validation"):
        src_dir = require(ade / "annotations" / split, "ADE20K annotation folder")
        dst_dir = ade / "annotations_detectron2" / split
        convert_all(((p, dst_dir / p.name) for p in sorted(src_dir.glob("*.png"))), convert,
                    f"ADE20K {split}")


if __name__ == "__main__":
    main()
