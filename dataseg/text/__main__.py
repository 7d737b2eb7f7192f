"""CLI: precompute the text-embedding cache, e.g. before training on a machine without a GPU.

    python -m dataseg.text --names "cat" "dog, puppy"
    python -m dataseg.text --dataset dataseg_ade20k_sem_seg_val
    python -m dataseg.text --names-file classes.txt --encoder clip --checkpoint ViT-L-14.pt
"""
import argparse
import sys
from pathlib import Path

from dataseg.data.builtin import register_all_builtin
from dataseg.data.dataset_info import get_dataset_info

from . import DEFAULT_TEMPLATES, ENCODERS, cache_entry_path, embed_vocabulary


def _parse_names(lines, source):
    out = []
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        syns = [s.strip() for s in line.split(",") if s.strip()]
        if not syns:
            raise SystemExit(f"error: {source} line {i}: no class name in {line!r}")
        out.append(syns)
    return out


def _vocabularies(args):
    """Yields (label, class_synonyms) for every vocabulary requested."""
    if args.names:
        yield "--names", _parse_names(args.names, "--names")
    if args.names_file:
        path = Path(args.names_file)
        if not path.is_file():
            raise SystemExit(f"error: --names-file {path} does not exist")
        yield str(path), _parse_names(path.read_text().splitlines(), str(path))
    for name in args.dataset or []:
        register_all_builtin()  # idempotent; records paths only

        try:
            info = get_dataset_info(name)
        except KeyError as e:
            raise SystemExit(f"error: {e.args[0]}") from None
        yield name, info.class_synonyms


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dataseg.text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs="+", help='class names; synonyms comma-separated: "dog, puppy"')
    p.add_argument("--names-file", help="one class per line, synonyms comma-separated")
    p.add_argument("--dataset", nargs="+", help="registered dataset names")
    p.add_argument("--encoder", default="minilm", choices=ENCODERS)
    p.add_argument("--clip-model", default="ViT-L-14")
    p.add_argument("--checkpoint", default="", help="CLIP weights: local file or tag")
    p.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES))
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    if not (args.names or args.names_file or args.dataset):
        p.error("give --names, --names-file or --dataset")
    kwargs = dict(encoder=args.encoder, templates=args.templates, clip_model=args.clip_model,
                  checkpoint=args.checkpoint, cache_dir=args.cache_dir)
    for label, synonyms in _vocabularies(args):
        emb = embed_vocabulary(synonyms, **kwargs)
        print(f"{label}: {emb.shape[0]} classes x {emb.shape[1]} -> "
              f"{cache_entry_path(synonyms, **kwargs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
