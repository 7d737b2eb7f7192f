"""Training and evaluation plumbing on top of Detectron2's engine."""
from dataseg.engine.checkpoint import (
    AtomicCheckpointer,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointReadError,
)
from dataseg.engine.defaults import (
    ConfigError,
    build_cfg,
    default_argument_parser,
    parse_args,
    setup_cfg,
)
from dataseg.engine.launch import LaunchError, launch
from dataseg.engine.preflight import PreflightError, preflight
from dataseg.engine.trainer import DaTaSegTrainer

__all__ = ["AtomicCheckpointer", "CheckpointError", "CheckpointMismatchError",
           "CheckpointNotFoundError", "CheckpointReadError", "ConfigError", "build_cfg",
           "default_argument_parser", "parse_args", "setup_cfg", "launch", "LaunchError",
           "DaTaSegTrainer", "PreflightError", "preflight"]
