"""A small world of rendered scenes, written in the real datasets' formats, in which DaTaSeg's
claims can be tried without downloading COCO, ADE20K or Objects365.

Nothing is generated or written at import: ``register_synthetic_world`` only registers, and the
world is generated on first use (``DatasetCatalog.get``) or by ``ensure_generated`` / the CLI
``python -m dataseg.data.synthetic``.
"""
from .generate import ensure_generated, generate_world, is_generated, read_summary
from .params import SyntheticWorldParams
from .registration import DATASETS, register_synthetic_world
from .vocabulary import KINDS, vocabulary

__all__ = [
    "DATASETS",
    "KINDS",
    "SyntheticWorldParams",
    "ensure_generated",
    "generate_world",
    "is_generated",
    "read_summary",
    "register_synthetic_world",
    "vocabulary",
]
