"""Training and evaluation plumbing on top of Detectron2's engine."""
from dataseg.engine.checkpoint import AtomicCheckpointer, CheckpointMismatchError
from dataseg.engine.defaults import ConfigError, build_cfg, default_argument_parser, setup_cfg
from dataseg.engine.launch import launch
from dataseg.engine.trainer import DaTaSegTrainer

__all__ = ["AtomicCheckpointer", "CheckpointMismatchError", "ConfigError", "build_cfg",
           "default_argument_parser", "setup_cfg", "launch", "DaTaSegTrainer"]
