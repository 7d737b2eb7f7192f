"""Engine tests import tests/engine_helpers.py (tiny configs), shared with the top-level tests."""
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(autouse=True)
def _restore_loggers():
    """DaTaSegTrainer(cfg) calls Detectron2's setup_logger, which stops the "dataseg" and
    "detectron2" loggers propagating: undo it after each test so that later tests' caplog
    (text cache warnings, loaders) still sees their records wherever the engine tests run."""
    saved = {}
    for name in ("dataseg", "detectron2", "d2", "fvcore"):
        log = logging.getLogger(name)
        saved[name] = (log.propagate, list(log.handlers), log.level)
    yield
    for name, (propagate, handlers, level) in saved.items():
        log = logging.getLogger(name)
        for h in list(log.handlers):
            if h not in handlers:
                log.removeHandler(h)
        log.propagate, log.level = propagate, level
