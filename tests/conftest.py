from pathlib import Path

import pytest

from gateway.files import copy_excerpt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if not DATA.is_dir():
        skip = pytest.mark.skip(reason=f"evaluation data not found at {DATA}")
        for item in items:
            if "data" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def short_clip(tmp_path_factory, data) -> Path:
    """Two seconds of a clip with a face and an audio track."""
    return copy_excerpt(data / "videos" / "short_hamilton_clip.mp4", tmp_path_factory.mktemp("clips") / "hamilton.mp4", 2.0)


@pytest.fixture(scope="session")
def faces_only(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "faces.yaml"
    path.write_text("classes:\n  plate:\n    enabled: false\n")
    return path
