"""Suite-wide test hygiene."""
import logging

import pytest


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_closed_streams():
    """A test that sets up Detectron2/DaTaSeg logging (setup_logger) while pytest captures
    output leaves handlers writing to that capture's stream, closed after the test; a later
    test that logs would then print 'Logging error' tracebacks into its own captured output.
    Such handlers are removed before each test (the CLIs run in fresh processes, where none
    exists)."""
    for logger in [logging.getLogger()] + [logging.getLogger(n) for n in
                                           list(logging.root.manager.loggerDict)]:
        for handler in list(getattr(logger, "handlers", [])):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)
    yield
