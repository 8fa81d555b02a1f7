"""docs/deploy.md's multi-node example cannot rot: its gateway configurations load with the real
loader, and its compose file names the services the page describes.

A configuration block is a ```yaml block whose first line is ``# gateway.yaml of <node>``; the
compose file is the ```yaml block whose first line is ``# compose.yaml``. The files a configuration
names (secrets, CA certificates) are made beside it, as the compose file mounts them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.config import load_config
from gateway.storage import node_prefix

DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(first_line: str) -> list[str]:
    return [block for block in _BLOCK.findall(DOC.read_text("utf-8")) if block.startswith(first_line)]


def _configs() -> list[tuple[str, str]]:
    return [(block.split("\n", 1)[0].removeprefix("# gateway.yaml of ").strip(), block)
            for block in _blocks("# gateway.yaml of ")]


def test_the_page_has_a_configuration_for_each_of_the_three_nodes():
    assert sorted(node for node, _ in _configs()) == ["gw-1", "gw-2", "gw-3"]


@pytest.mark.parametrize(("node", "text"), _configs(), ids=[node for node, _ in _configs()])
def test_each_gateway_configuration_loads(node, text, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    data = yaml.safe_load(text)
    s3, escrow, cluster = data["storage"]["objects"]["s3"], data["escrow"], data["cluster"]
    for name in (s3["secret_access_key_file"], escrow["token_file"], escrow["ca"], cluster["password_file"]):
        file = tmp_path / name
        file.write_text("not-a-real-secret\n")
        file.chmod(0o600)

    config, policies = load_config(path)

    assert config.cluster.node == node and config.cluster.url.endswith(f"//{node}:8080")
    assert len(config.escrow.address) == 3 and config.escrow.token_file.is_file()
    assert node_prefix(config) == f"{node}/"  # one vault per node, the same s3 section on every node
    assert set(policies) == set(config.cameras)


def test_the_nodes_share_cameras_database_bucket_and_escrow_and_differ_in_name():
    loaded = {node: yaml.safe_load(text) for node, text in _configs()}
    shared = [{key: value for key, value in data.items() if key != "cluster"} for data in loaded.values()]
    assert all(data == shared[0] for data in shared)
    assert len({data["cluster"]["database"] for data in loaded.values()}) == 1
    assert len({data["cluster"]["node"] for data in loaded.values()}) == 3


def test_the_compose_file_has_the_engines_the_page_describes():
    (text,) = _blocks("# compose.yaml")
    services = yaml.safe_load(text)["services"]
    assert {"postgres", "seaweed-master", "volume-1", "volume-2", "volume-3", "filer", "s3",
            "bao-1", "bao-2", "bao-3", "gw-1", "gw-2", "gw-3"} <= set(services)
    assert "-defaultReplication=001" in services["seaweed-master"]["command"]
    for node, _ in _configs():  # each node's configuration is mounted where its command reads it
        assert any(volume.startswith(f"./{node}:/etc/privacy-gateway") for volume in services[node]["volumes"])
