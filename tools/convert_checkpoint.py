"""Convert published weights into a DaTaSeg checkpoint (issue 23).

    python tools/convert_checkpoint.py INPUT OUTPUT.pth [--layout auto] \\
        [--config-file CONFIG [--opts KEY VALUE ...]]

INPUT: a Mask2Former model-zoo file (Detectron2 ``.pkl``, ResNet backbone), an HF transformers
``Mask2FormerForUniversalSegmentation`` checkpoint (``model.safetensors`` / ``.bin``, ResNet
backbone), or an ImageNet ResNet-50 in torchvision's or timm's state-dict layout (``.pth``,
``.safetensors``). ``--layout`` states which (default: recognised from the keys); a file of
another kind is a one-line error.

With ``--config-file`` every tensor is checked against the model that config builds (a key or
shape that does not fit is a one-line error naming the key and both shapes), Mask2Former's
``class_embed`` is kept only if the config uses the fixed-vocabulary linear classifier
(``MODEL.DATASEG.CLASSIFIER.NAME: "linear"``), and the model keys the file does not fill are
listed. OUTPUT is ``{"model": state dict}`` (``torch.save``), loadable through
``MODEL.WEIGHTS`` like any DaTaSeg checkpoint. Prints the conversion report; exit status 1 on
an error (one line on stderr).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dataseg  # noqa: E402,F401
from dataseg.conversion import (  # noqa: E402
    LAYOUTS,
    ConversionError,
    convert_state_dict,
)
from dataseg.engine.checkpoint import CheckpointError, read_weights  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("input", help="Mask2Former .pkl, HF .safetensors/.bin, torchvision/timm .pth")
    p.add_argument("output", help="DaTaSeg checkpoint to write (.pth)")
    p.add_argument("--layout", default="auto", choices=["auto"] + sorted(LAYOUTS),
                   help="what INPUT is (default: recognised from its keys)")
    p.add_argument("--config-file", default="",
                   help="check the tensors against the model this config builds")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    model = None
    if args.config_file:
        from detectron2.modeling import build_model

        from dataseg.engine import build_cfg
        cfg = build_cfg(args.config_file, args.opts)
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
    try:
        state = read_weights(args.input)[1]
        layout = None if args.layout == "auto" else args.layout
        converted, report = convert_state_dict(state, args.input, model, layout)
    except (ConversionError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    if model is not None and report.missing_mask_branch:
        print(f"warning: {len(report.missing_mask_branch)} mask-branch keys are not in the "
              "checkpoint (trained from scratch)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": converted, "__author__": f"{LAYOUTS[report.layout]} ({args.input}), "
                "converted by tools/convert_checkpoint.py"}, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
