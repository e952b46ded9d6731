import pytest
from helpers.images import write_image_dataset


@pytest.fixture
def image_dataset(tmp_path):
    return write_image_dataset(tmp_path / "ds")
