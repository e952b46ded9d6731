import logging

import pytest
from helpers.images import write_image_dataset


@pytest.fixture
def image_dataset(tmp_path):
    return write_image_dataset(tmp_path / "ds")


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Each test leaves the root logger's handlers as it found them: a job script run in a test
    (patchlens.workflow.run) installs a handler on that test's captured stderr, which is closed
    once the test ends and would make a later test's log lines fail to print."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
