"""Shared fixtures of the data tests: a DaTaSeg config and automatic dataset clean-up."""
import sys
from pathlib import Path

import pytest
from detectron2.config import get_cfg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataseg.config import add_dataseg_config  # noqa: E402
from dataseg.data.register import unregister_dataset  # noqa: E402


@pytest.fixture
def cfg():
    c = add_dataseg_config(get_cfg())
    c.INPUT.FORMAT = "RGB"
    c.INPUT.MIN_SIZE_TEST = 48
    c.INPUT.MAX_SIZE_TEST = 96
    c.DATALOADER.NUM_WORKERS = 0
    c.SEED = 7
    return c


@pytest.fixture
def names():
    """Collects dataset names a test registers and unregisters them afterwards."""
    registered = []
    yield registered
    for n in registered:
        unregister_dataset(n)
