"""Config set-up and command-line options shared by train_net.py and the tests."""
import difflib
import glob
import logging
import os

import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from dataseg.config import add_dataseg_config, per_train_dataset
from dataseg.data.register_files import DatasetFileError, register_dataset_files
from dataseg.engine.arguments import default_argument_parser, parse_args
from dataseg.utils.atomic import atomic_write_bytes

__all__ = ["default_argument_parser", "parse_args", "setup_cfg", "build_cfg", "ConfigError",
           "setup_loggers", "register_config_datasets", "setup_datasets", "build_tool_cfg",
           "config_differences",
           "warn_if_config_changed"]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override that cannot be used, with the file/key at fault."""


def build_cfg(config_file=None, opts=()):
    """A Detectron2 config with DaTaSeg's keys, merged from a file and overrides.

    Unknown keys raise ConfigError naming the key and the file (or "command line").
    """
    cfg = get_cfg()
    add_dataseg_config(cfg)
    # "": not set by the config or the overrides (Detectron2's default is "cuda")
    cfg.MODEL.DEVICE = ""
    if config_file and not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
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
    if not cfg.MODEL.DEVICE:
        # not asked for: the GPU when there is one, else the CPU (silently)
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # One config for laptops and clusters: fall back to the CPU rather than crash; said
        # only when the config or the command line asked for CUDA.
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_tool_cfg(config_file=None, opts=(), generate=False):
    """``build_cfg`` plus ``setup_datasets``: the config of demo/demo.py, demo/web.py and
    tools/export_model.py (unfrozen), with every dataset the config declares registered."""
    cfg = build_cfg(config_file, opts)
    setup_datasets(cfg, config_file, generate=generate)
    return cfg


def _uses_synthetic(cfg):
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    names.append(cfg.MODEL.DATASEG.TEST.get("VOCABULARY_DATASET", "") or "")
    names.append(cfg.MODEL.DATASEG.TEST.get("VOCABULARY", "") or "")
    return any(str(n).startswith("synth_") for n in names)


def check_datasets(cfg):
    """Every dataset named in the config is registered (error lists close matches)."""
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in registered:
                close = difflib.get_close_matches(name, sorted(registered), n=5, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"DATASETS.{key}: dataset '{name}' is not registered.{hint} Declare your "
                    "own in a datasets YAML file (DATASETS.REGISTER or train_net.py --datasets "
                    "FILE) or register them with dataseg.data.register (docs/DATASETS.md, "
                    "'Your own datasets, no code').")
    for key in ("TRAIN_RATIOS", "TRAIN_BATCH_SIZES", "TRAIN_LOSS_WEIGHTS", "TRAIN_AUGMENTATIONS",
                "TRAIN_CROP_SIZES"):
        try:
            per_train_dataset(cfg, key, None)
        except ValueError as e:
            raise ConfigError(str(e)) from e


def _resolve_dataset_file(path, config_file):
    """A datasets file path: as given (absolute or from the cwd), else next to the config."""
    path = os.path.expanduser(str(path))
    candidates = [path]
    if not os.path.isabs(path) and config_file:
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(config_file)), path))
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c)
    raise ConfigError(f"DATASETS.REGISTER: datasets file not found: {path} (tried "
                      f"{', '.join(os.path.abspath(c) for c in candidates)})")


def register_config_datasets(cfg, config_file=None):
    """Resolves cfg.DATASETS.REGISTER to absolute paths (in cfg, unless it is frozen) and
    registers their datasets.

    Called in every process (train_net.py's main runs in each spawned rank); data-loader
    workers register them through their init function (see dataseg.data.build).
    """
    files = [_resolve_dataset_file(p, config_file) for p in cfg.DATASETS.REGISTER]
    if not cfg.is_frozen():
        cfg.DATASETS.REGISTER = tuple(files)
    try:
        return register_dataset_files(files)
    except DatasetFileError as e:
        raise ConfigError(str(e)) from e


def setup_datasets(cfg, config_file=None, generate=True):
    """The one dataset set-up of every tool: train_net.py, demo/demo.py, demo/web.py,
    tools/export_model.py and ``DaTaSegPredictor(cfg)`` all call it, so what a run registered
    from its config (and so from its saved ``OUTPUT_DIR/config.yaml``) every tool registers.

    Registers the datasets files of DATASETS.REGISTER (paths resolved against the working
    directory, then ``config_file``'s folder; written back absolute into an unfrozen ``cfg``,
    which is how a run's config.yaml names them) and, when the config names a ``synth_*``
    dataset, the synthetic world (``generate``: also writes it on first use, once, cached; the
    evaluators and the web demo's examples read its files). Builtin datasets are registered by
    ``import dataseg``. Returns the names registered from files. Errors: :class:`ConfigError`
    naming the file and entry."""
    registered = register_config_datasets(cfg, config_file)
    if _uses_synthetic(cfg):
        from dataseg.data.synthetic import ensure_generated, register_synthetic_world

        register_synthetic_world(cfg)
        if generate:
            ensure_generated(cfg)
    return registered


def setup_loggers(output_dir=None):
    """Detectron2's and DaTaSeg's loggers: console (rank 0) and ``output_dir``/log.txt
    (``log.txt.rank<N>`` for other ranks), as Detectron2's default_setup does for its own."""
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank, name="dataseg", abbrev_name="dataseg")
    return setup_logger(output_dir, distributed_rank=rank)


def _flatten(node, prefix=""):
    out = {}
    for key, value in (node or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


_ABSENT = "(absent)"


def config_differences(saved_yaml: str, cfg):
    """``[(key, saved value, value in cfg)]`` for every full key whose value differs between
    a dumped config (``OUTPUT_DIR/config.yaml``) and ``cfg``, sorted by key; a key only one of
    them has is ``"(absent)"`` in the other."""
    old = _flatten(yaml.safe_load(saved_yaml))
    new = _flatten(yaml.safe_load(cfg.dump()))
    return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def _short(value, limit=60):
    text = repr(value) if value is not _ABSENT else value
    return text if len(text) <= limit else text[:limit - 3] + "..."


def warn_if_config_changed(cfg, output_dir):
    """For a run that resumes (``output_dir`` holds ``last_checkpoint``): warns when ``cfg``
    differs from the ``config.yaml`` that the interrupted run saved there, naming each key that
    differs (with both values). Returns those keys (empty when nothing differs or nothing is
    there to compare)."""
    saved = os.path.join(output_dir, "config.yaml")
    if not (os.path.isfile(saved) and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))):
        return []
    try:
        with open(saved) as f:
            diffs = config_differences(f.read(), cfg)
    except (OSError, yaml.YAMLError) as e:
        logger.warning("cannot compare the config with %s, saved by the run being resumed: %s",
                       saved, e)
        return []
    if diffs:
        logger.warning(
            "resuming with a config that differs from %s, saved by the run being resumed, in "
            "%d key%s: %s", saved, len(diffs), "" if len(diffs) == 1 else "s",
            "; ".join(f"{k} ({_short(a)} -> {_short(b)})" for k, a, b in diffs))
    return [k for k, _, _ in diffs]


def _default_setup(cfg, args):
    """Detectron2's default_setup, with the DaTaSeg logger and --eval-only's config written as
    ``config_eval.yaml`` (not over the training run's ``config.yaml`` in the same OUTPUT_DIR)."""
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    rank = comm.get_rank()
    d2_logger = setup_loggers(output_dir)
    d2_logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    d2_logger.info("Environment info:\n%s", collect_env_info())
    d2_logger.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        with open(args.config_file) as f:
            d2_logger.info("Contents of args.config_file=%s:\n%s", args.config_file, f.read())
    if comm.is_main_process() and output_dir:
        _remove_stale_temp_files(output_dir)
        if getattr(args, "resume", False) and not getattr(args, "eval_only", False):
            warn_if_config_changed(cfg, output_dir)
        name = "config_eval.yaml" if getattr(args, "eval_only", False) else "config.yaml"
        path = os.path.join(output_dir, name)
        d2_logger.info("Running with full config:\n%s", cfg.dump())
        atomic_write_bytes(path, cfg.dump().encode())
        d2_logger.info("Full config saved to %s", path)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def _remove_stale_temp_files(output_dir):
    """Removes temporary files an interrupted atomic write (checkpoint, summary) left behind."""
    for tmp in glob.glob(os.path.join(glob.escape(output_dir), ".*.tmp")):
        try:
            os.unlink(tmp)
            logger.info("removed a stale temporary file of an interrupted save: %s", tmp)
        except OSError:
            pass


def setup_cfg(args):
    """Builds, checks and freezes the config of a train_net.py run; Detectron2's default_setup
    (plus DaTaSeg's logger) and registration of the DATASETS.REGISTER files."""
    opts = list(args.opts or [])
    if getattr(args, "skip_preflight", False):
        opts += ["DATASETS.PREFLIGHT", "False"]
    cfg = build_cfg(args.config_file, opts)
    datasets = list(getattr(args, "datasets", []) or [])
    if datasets:
        cfg.DATASETS.REGISTER = tuple(cfg.DATASETS.REGISTER) + tuple(datasets)
    registered = setup_datasets(cfg, args.config_file)
    check_datasets(cfg)
    cfg.freeze()
    _default_setup(cfg, args)
    if registered:
        logger.info("Registered %d datasets from %s: %s", len(registered),
                    ", ".join(cfg.DATASETS.REGISTER), ", ".join(registered))
    return cfg
