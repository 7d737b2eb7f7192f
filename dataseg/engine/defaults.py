"""Config set-up and command-line options shared by train_net.py and the tests."""
import difflib
import logging

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser as d2_argument_parser
from detectron2.engine import default_setup

from dataseg.config import add_dataseg_config, per_train_dataset

__all__ = ["default_argument_parser", "setup_cfg", "build_cfg", "ConfigError"]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override that cannot be used, with the file/key at fault."""


def default_argument_parser(epilog=None):
    """Detectron2's options; --dist-url defaults to "auto" (a free local port)."""
    parser = d2_argument_parser(epilog)
    parser.set_defaults(dist_url="auto")
    return parser


def build_cfg(config_file=None, opts=()):
    """A Detectron2 config with DaTaSeg's keys, merged from a file and overrides.

    Unknown keys raise ConfigError naming the key and the file (or "command line").
    """
    cfg = get_cfg()
    add_dataseg_config(cfg)
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise ConfigError(f"{config_file}: {e.args[0] if e.args else e}") from e
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {config_file}") from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(f"command-line override {list(opts)}: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # One config for laptops and clusters: fall back to the CPU rather than crash.
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def _uses_synthetic(cfg):
    return any(n.startswith("synth_") for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))


def check_datasets(cfg):
    """Every dataset named in the config is registered (error lists close matches)."""
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in registered:
                close = difflib.get_close_matches(name, sorted(registered), n=5, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"DATASETS.{key}: dataset '{name}' is not registered.{hint} Register your "
                    "own with the functions in dataseg.data.register (see README).")
    for key in ("TRAIN_RATIOS", "TRAIN_BATCH_SIZES", "TRAIN_LOSS_WEIGHTS", "TRAIN_AUGMENTATIONS",
                "TRAIN_CROP_SIZES"):
        try:
            per_train_dataset(cfg, key, None)
        except ValueError as e:
            raise ConfigError(str(e)) from e


def setup_cfg(args):
    """Builds, checks and freezes the config of a train_net.py run; Detectron2's default_setup."""
    cfg = build_cfg(args.config_file, args.opts)
    if _uses_synthetic(cfg):
        from dataseg.data.synthetic import ensure_generated, register_synthetic_world

        register_synthetic_world(cfg)
        # Generate now (once, cached): evaluators read the json files before any loader runs.
        ensure_generated(cfg)
    check_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg
