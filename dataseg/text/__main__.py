"""CLI: precompute the text-embedding cache, e.g. before training on a machine without a GPU.

    python -m dataseg.text --names "cat" "dog, puppy"
    python -m dataseg.text --dataset dataseg_ade20k_sem_seg_val
    python -m dataseg.text --names-file classes.txt --encoder clip --checkpoint ViT-L-14.pt
    python -m dataseg.text --names-file classes.txt --config-file configs/quickstart.yaml

With ``--config-file`` the encoder settings are the config's (``MODEL.TEXT_ENCODER``), so
``demo/demo.py`` and ``demo/web.py`` with that config then find the vocabulary in the cache.
"""
import argparse
import sys

from dataseg.data.builtin import register_all_builtin
from dataseg.data.dataset_info import get_dataset_info
from dataseg.vocabulary import VocabularyError, read_vocabulary, vocabulary_from_items

from . import DEFAULT_TEMPLATES, ENCODERS, TextEmbedder, text_encoder_kwargs_from_cfg


def _vocabularies(args):
    """Yields (label, Vocabulary) for every vocabulary requested (syntax: dataseg/vocabulary.py)."""
    if args.names:
        yield "--names", vocabulary_from_items(args.names, "--names", label="--names")
    if args.names_file:
        yield args.names_file, read_vocabulary(args.names_file)
    for name in args.dataset or []:
        register_all_builtin()  # idempotent; records paths only

        try:
            info = get_dataset_info(name)
        except KeyError as e:
            raise SystemExit(f"error: {e.args[0]}") from None
        yield name, info.vocabulary


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dataseg.text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs="+",
                   help='one class per argument; synonyms by "|" or ",": "dog, puppy"')
    p.add_argument("--names-file",
                   help="a vocabulary file (one class a line; see dataseg/vocabulary.py)")
    p.add_argument("--dataset", nargs="+", help="registered dataset names")
    p.add_argument("--encoder", default="minilm", choices=ENCODERS)
    p.add_argument("--clip-model", default="ViT-L-14")
    p.add_argument("--checkpoint", default="", help="CLIP weights: local file or tag")
    p.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES))
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="take the encoder settings (and cache folder, unless --cache-dir is "
                        "given) from this DaTaSeg config's MODEL.TEXT_ENCODER")
    args = p.parse_args(argv)
    if not (args.names or args.names_file or args.dataset):
        p.error("give --names, --names-file or --dataset")
    kwargs = dict(encoder=args.encoder, templates=args.templates, clip_model=args.clip_model,
                  checkpoint=args.checkpoint, cache_dir=args.cache_dir)
    if args.config_file:
        from dataseg.engine.defaults import ConfigError, build_cfg

        try:
            kwargs = dict(text_encoder_kwargs_from_cfg(build_cfg(args.config_file, [])),
                          **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
        except (ConfigError, OSError) as e:
            raise SystemExit(f"error: {e}") from None
    embedder = TextEmbedder(**kwargs)
    try:
        for label, vocab in _vocabularies(args):
            emb = embedder(vocab)
            print(f"{label}: {emb.shape[0]} classes x {emb.shape[1]} -> "
                  f"{embedder.cache_path(vocab)}")
    except VocabularyError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
