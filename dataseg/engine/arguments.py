"""train_net.py's command line, with no import beyond the standard library.

train_net.py loads this file by its path before anything else, so ``--help`` and usage errors
answer before torch, Detectron2 and ``dataseg`` (whose import registers the model and the
datasets) are loaded (see benchmarks/bench_cli_help.py). ``dataseg.engine`` re-exports
``default_argument_parser`` and ``parse_args`` from here.

The options are Detectron2's (``detectron2.engine.default_argument_parser``: --config-file,
--resume, --eval-only, --num-gpus, --num-machines, --machine-rank, --dist-url, then KEY VALUE
overrides) with --dist-url defaulting to "auto" (a free local port), plus DaTaSeg's --datasets
and --skip-preflight.
"""
import argparse
import sys

__all__ = ["default_argument_parser", "parse_args"]

_EXAMPLES = """
Examples:
  train:        train_net.py --config-file configs/quickstart.yaml
  evaluate:     train_net.py --config-file RUN/config.yaml --eval-only MODEL.WEIGHTS W.pth
  resume:       train_net.py --config-file RUN/config.yaml --resume
  overrides:    train_net.py --config-file cfg.yaml SOLVER.BASE_LR 0.001 MODEL.WEIGHTS w.pth
  two machines: train_net.py --num-machines 2 --machine-rank 0|1 --dist-url tcp://HOST:PORT ...
"""


def default_argument_parser(epilog=None):
    """Detectron2's train_net options plus --datasets and --skip-preflight."""
    parser = argparse.ArgumentParser(epilog=epilog or _EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint when there is one "
                             "(model, optimizer, scheduler, iteration, RNG states)")
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="the rank of this machine (unique per machine)")
    parser.add_argument("--dist-url", default="auto",
                        help="initialization URL of torch.distributed (default: auto, a free "
                             "local port)")
    parser.add_argument("--datasets", action="append", default=[], metavar="FILE",
                        help="a YAML file of datasets to register (appended to "
                             "DATASETS.REGISTER; may be repeated)")
    parser.add_argument("--skip-preflight", action="store_true",
                        help="do not load and check every train and test dataset (records, "
                             "files, label sizes) before the first iteration (sets "
                             "DATASETS.PREFLIGHT False)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="Modify config options at the end of the command, as space-"
                             "separated KEY VALUE pairs (e.g. MODEL.WEIGHTS w.pth)")
    return parser


def parse_args(argv=None, parser=None):
    """Parses train_net.py's command line; flags may come before or after the overrides.

    Everything after the first override is taken as overrides, so ``... SOLVER.MAX_ITER 10
    --resume`` would fail with "Override list has odd length". Here flags found among the
    overrides are moved in front; an unknown ``--flag`` there is an error naming it.
    """
    parser = parser or default_argument_parser()
    args = parser.parse_args(argv)
    opts = list(args.opts or [])
    if not any(t.startswith("--") for t in opts):
        return args
    argv = list(argv if argv is not None else sys.argv[1:])
    prefix = argv[:len(argv) - len(opts)]
    actions = {}
    for action in parser._actions:  # argparse's public listing of the defined options
        for option in action.option_strings:
            actions[option] = action
    flags, overrides, i = [], [], 0
    while i < len(opts):
        tok = opts[i]
        if tok.startswith("--"):
            option = tok.split("=", 1)[0]
            if option not in actions:
                parser.error(f"unknown option {option} among the config overrides "
                             f"{' '.join(opts)}: options are {', '.join(sorted(actions))}; "
                             "overrides are KEY VALUE pairs")
            takes_value = actions[option].nargs != 0 and "=" not in tok
            flags.append(tok)
            if takes_value:
                if i + 1 >= len(opts):
                    parser.error(f"option {option} needs a value")
                flags.append(opts[i + 1])
                i += 1
        else:
            overrides.append(tok)
        i += 1
    return parser.parse_args(prefix + flags + overrides)
