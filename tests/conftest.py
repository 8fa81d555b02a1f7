from pathlib import Path

import av
import pytest

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


def cut_clip(source: Path, target: Path, seconds: float) -> Path:
    """The first ``seconds`` of every stream of ``source``, copied without re-encoding."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        mapping = {s: dst.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        for packet in src.demux(*mapping):
            if packet.dts is None:
                continue
            if packet.pts is not None and packet.pts * packet.stream.time_base >= seconds:
                continue
            packet.stream = mapping[packet.stream]
            dst.mux(packet)
    return target


@pytest.fixture(scope="session")
def short_clip(tmp_path_factory, data) -> Path:
    """Two seconds of a clip with a face and an audio track."""
    return cut_clip(data / "videos" / "short_hamilton_clip.mp4", tmp_path_factory.mktemp("clips") / "hamilton.mp4", 2.0)


@pytest.fixture(scope="session")
def faces_only(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "faces.yaml"
    path.write_text("classes:\n  plate:\n    enabled: false\n")
    return path
