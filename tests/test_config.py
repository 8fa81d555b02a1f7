"""Gateway configuration: the embedded default loads; bad configs are refused whole, by field path."""

import pytest

from gateway.config import DEFAULT, ConfigError, GatewayConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_embedded_default_is_one_demo_camera_on_the_bundled_clip(tmp_path):
    config, policies = load_config(None, tmp_path / "data")
    assert list(config.cameras) == ["demo"]
    demo = config.cameras["demo"]
    assert demo.kind == "file" and demo.source == str(DEFAULT.parent / "samples" / "vtest-10s.mp4")
    assert config.storage.data_dir == tmp_path / "data" and config.keys_dir == tmp_path / "data" / "keys"
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert policies["demo"].name == "live-demo" and config.ice_servers == ()


def test_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "p.yaml").write_text("classes: {plate: {enabled: false}}\n")
    config, policies = load_config(write(tmp_path, """
cameras:
  gate: {source: "rtsp://10.0.0.5/stream", transport: udp, policy: p.yaml}
  yard: {source: "file://clip.mp4"}
storage: {data_dir: store}
"""))
    assert config.cameras["gate"].kind == "rtsp" and config.cameras["gate"].transport == "udp"
    assert config.cameras["yard"].source == str(tmp_path / "clip.mp4")
    assert config.storage.data_dir == tmp_path / "store"
    assert not policies["gate"].classes.plate.enabled and policies["yard"].classes.plate.enabled


@pytest.mark.parametrize("text, message", [
    ("cameras: {a: {source: rtsp://x, holdback: 5}}", "cameras.a.holdback: unknown key"),
    ("cameras: {a: {source: rtsp://x, holdback_ms: 5}}", "cameras.a.holdback_ms: Input should be greater than or equal to 20"),
    ("cameras: {a: {source: rtsp://x, transport: sctp}}", "cameras.a.transport: Input should be 'tcp' or 'udp'"),
    ("cameras: {a: {source: rtsp://x, protocol: file}}", "cameras.a: protocol file does not match source"),
    ("cameras: {'../up': {source: rtsp://x}}", "camera id '../up'"),
    ("cameras: {}", "cameras: at least one camera is needed"),
    ("cameras: {a: {source: rtsp://x}}\nlisten: {port: 99999}", "listen.port: Input should be less than or equal to 65535"),
    ("cameras: {a: {source: rtsp://x}}\nstorage: {datadir: x}", "storage.datadir: unknown key"),
    ("cameras: {a: {source: rtsp://x}}\nrtsp: {max_connections_per_address: 0}",
     "rtsp.max_connections_per_address: Input should be greater than or equal to 1"),
    ("cameras: {a: {source: rtsp://x}}\nrtsp: {auth_timeout_s: 0}", "rtsp.auth_timeout_s: Input should be greater than 0"),
    ("cameras: {a: {source: rtsp://x}}\nwhep: {max_sessions_per_principal: 0}",
     "whep.max_sessions_per_principal: Input should be greater than or equal to 1"),
    ("cameras: {a: {source: rtsp://x}}\nwhip: {max_session: 3}", "whip.max_session: unknown key"),
    ("cameras: {a: {source: missing.mp4}}", "cameras.a.source: no such file"),
    ("cameras: {a: {source: rtsp://x, policy: nope.yaml}}", "cameras.a.policy:"),
    ("cameras: {a: {source: rtsp://x}}\ntls: {cert: c.pem, key: k.pem}", "tls.cert: no such file"),
    ("cameras: {a: {source: rtsp://x}}\ncluster: {node: n1, url: 'http://h:1', database: db, rtsp_url: 'rtsp://u:p@h:1'}",
     "cluster.rtsp_url: an rtsp://host[:port] address without path or credentials"),
    ("cameras: {a: {source: rtsp://x}}\nrtsp: {port: 0}\ncluster: {node: n1, url: 'http://h:1', database: db}",
     "cluster.rtsp_url: required with rtsp.port 0"),
    ("- just a list", "expected a mapping at the top level"),
    ("cameras: [unclosed", "not valid YAML"),
])
def test_bad_configs_are_refused_with_the_field_path(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value)


@pytest.mark.parametrize("value", ["true", "false"])
def test_a_site_config_that_sets_demo_identities_is_refused_with_what_to_do(tmp_path, value):
    """The key of earlier versions: a site configuration never creates demo identities, so it is not
    ignored but refused, saying where the demo is and how a site makes its people."""
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, f"cameras: {{a: {{source: rtsp://x}}}}\ndemo_identities: {value}\n"))
    message = str(error.value)
    assert "demo_identities: no longer accepted: a site configuration never creates demo identities" in message
    assert "`privacy-gateway serve` without --config" in message and "keys add-identity" in message


def test_the_embedded_default_does_not_mark_itself_as_the_demo():
    """Being the demo is the command line's knowledge (no --config), not a setting a file could copy."""
    assert "demo_identities" not in DEFAULT.read_text()
    assert "demo" not in GatewayConfig.model_fields


def test_an_invalid_policy_is_reported_with_its_camera(tmp_path):
    (tmp_path / "weak.yaml").write_text("classes: {face: {method: blur, strength: 0.01}}\n")
    with pytest.raises(ConfigError, match=r"(?s)cameras\.a\.policy: .*classes\.face\.strength: 0\.01 is too weak"):
        load_config(write(tmp_path, "cameras: {a: {source: rtsp://x, policy: weak.yaml}}"))


def test_a_cluster_node_advertises_its_rtsp_address_to_the_others(tmp_path):
    base = "cameras: {a: {source: rtsp://x}}\ncluster: {node: n1, url: 'https://[fd00::5]:8443', database: db"
    assert load_config(write(tmp_path, base + "}"))[0].rtsp_address is None  # no RTSP egress
    assert load_config(write(tmp_path, base + "}\nrtsp: {port: 9554}"))[0].rtsp_address == "rtsp://[fd00::5]:9554"
    config = load_config(write(tmp_path, base + ", rtsp_url: 'rtsp://gw-1.example:554/'}\nrtsp: {port: 0}"))[0]
    assert config.rtsp_address == "rtsp://gw-1.example:554"
