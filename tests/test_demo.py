"""The demo is explicit: only `serve` without --config is the demo, and it says so; a site
configuration never creates demo identities; the demo investigator's private key is written only
where the operator asks, never inside the data directory; each demo identity has its own
passphrase; a start prints no new viewer token while one is valid; an officer's narrowing of the
demo viewer's cameras survives a restart. Against the real command line, `serve` and OpenBao."""

import json
import re
import stat
from pathlib import Path

import pytest
from serve_harness import Running, demo_config

from gateway.api import Demo
from gateway.api.demo import BANNER, DEMO_INVESTIGATOR, DEMO_OFFICER, DEMO_VIEWER, TOKEN_FILE
from gateway.cli import main
from gateway.config import DEFAULT, ConfigError
from keys import KeyDirectory, PrivateIdentity

pytestmark = pytest.mark.realtime

SAMPLE = DEFAULT.parent / "samples" / "vtest-10s.mp4"
PASSPHRASE_LINE = re.compile(r"^  (demo-[a-z]+) \(([a-z-]+)\): (.+), passphrase: (\S+)$")


def passphrases(lines: list[str]) -> dict[str, tuple[Path, str]]:
    """name -> (identity file, passphrase) from a first start's lines."""
    return {m[1]: (Path(m[3]), m[4]) for m in map(PASSPHRASE_LINE.match, lines) if m}


def identity_files(root: Path) -> dict[Path, str]:
    """Every file under ``root`` that is an identity file (docs/vault-format.md), with the name it gives."""
    found = {}
    for path in (p for p in root.rglob("*") if p.is_file()):
        try:
            header = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(header, dict) and header.get("format") == "privacy-gateway-identity":
            found[path] = header["name"]
    return found


def cameras(running, token: str) -> list[str]:
    """The cameras ``token`` may use, as the gateway answers."""
    status, body = running.get("/api/cameras", token=token)
    assert status == 200, body
    return [c["id"] for c in json.loads(body)["cameras"]]


def audit(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "data" / "vault" / "audit.log").read_text().splitlines()]


# --- a site configuration ------------------------------------------------------------------------------

def test_a_site_configuration_never_creates_demo_identities(tmp_path, capsys, openbao):
    """The embedded default's camera and policy as a site's file: `serve --config` creates a key
    directory with nobody in it, writes no identity file and no token, and stops because the policy
    seals to an investigator nobody added (exit 2, one line saying so)."""
    site = tmp_path / "site.yaml"
    site.write_text(json.dumps({
        "cameras": {"demo": {"source": str(SAMPLE), "policy": str(DEFAULT.parent / "policies" / "live-demo.yaml")}},
        "listen": {"host": "127.0.0.1", "port": 0}, "escrow": openbao.config()}))
    data = tmp_path / "data"
    code = main(["serve", "--config", str(site), "--data", str(data)])
    out, err = capsys.readouterr()
    assert code == 2 and "unmask.face" in err and "investigator" in err, err
    assert "DEMO" not in out and "passphrase" not in out and "token" not in out
    assert KeyDirectory.open(data / "keys").identities == []
    assert not (data / "identities").exists() and not (data / TOKEN_FILE).exists()
    assert identity_files(tmp_path) == {}
    # the old key that turned demo identities on is refused, not ignored
    site.write_text(site.read_text()[:-1] + ', "demo_identities": true}')
    assert main(["serve", "--config", str(site), "--data", str(tmp_path / "other")]) == 2
    assert "demo_identities: no longer accepted" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    # and the demo's option does not go with a site configuration
    assert main(["serve", "--config", str(site), "--demo-investigator", str(tmp_path / "i.identity")]) == 2
    assert "--demo-investigator goes with the demo" in capsys.readouterr().err


# --- the demo's people ---------------------------------------------------------------------------------

def test_the_demo_investigators_file_is_written_only_where_asked_and_never_in_the_data_directory(tmp_path, capsys):
    """Without --demo-investigator its private key is kept nowhere; with it, only at that path; a path
    inside the data directory (also through a symbolic link) is refused before anything is made."""
    config, _ = demo_config(tmp_path, _NoCoSigner(), {})
    data = config.storage.data_dir
    # a path inside the data directory, directly or through a link: refused, and nothing is created
    (tmp_path / "elsewhere").symlink_to(data, target_is_directory=True)
    for inside in (data / "identities" / "investigator.identity", tmp_path / "elsewhere" / "inv.identity"):
        with pytest.raises(ConfigError, match=r"--demo-investigator .*: inside the gateway's data directory"):
            Demo(inside).prepare(config, announce=lambda line: None)
        assert not data.exists()
    # the command line says so in one line (exit 2), before any port or co-signer is opened
    assert main(["serve", "--data", str(data), "--demo-investigator", str(data / "inv.identity")]) == 2
    assert "inside the gateway's data directory" in capsys.readouterr().err and not data.exists()

    # not asked for: the investigator is in the key directory (the demo policy seals to it), its key nowhere
    lines: list[str] = []
    assert Demo().prepare(config, lines.append) is True
    people = {i.name: i.roles for i in KeyDirectory.open(config.keys_dir).identities}
    assert people == {DEMO_OFFICER: ("privacy-officer",), DEMO_VIEWER: ("viewer",), DEMO_INVESTIGATOR: ("investigator",)}
    assert sorted(identity_files(tmp_path).values()) == [DEMO_OFFICER, DEMO_VIEWER]
    assert any(line.startswith(f"  {DEMO_INVESTIGATOR} (investigator): private key not kept") for line in lines)
    assert lines[0] == BANNER and "not for production" in BANNER

    # asked for, in a new demo: written there, 0600, and in the data directory only officer and viewer
    config, _ = demo_config(tmp_path / "second", _NoCoSigner(), {})
    away = tmp_path / "away" / "investigator.identity"
    away.parent.mkdir()
    lines = []
    assert Demo(away).prepare(config, lines.append) is True
    assert PrivateIdentity.name_in(away) == DEMO_INVESTIGATOR and stat.S_IMODE(away.stat().st_mode) == 0o600
    assert sorted(identity_files(config.storage.data_dir).values()) == [DEMO_OFFICER, DEMO_VIEWER]
    assert passphrases(lines)[DEMO_INVESTIGATOR][0] == away
    # at a later start: the same file again is fine; another one cannot be honoured, and says why
    assert Demo(away).prepare(config, lambda line: None) is False
    with pytest.raises(ConfigError, match="only applies to a first start"):
        Demo(tmp_path / "away" / "another.identity").prepare(config, lambda line: None)
    # a key an earlier version left in the data directory is pointed out at every start
    config, _ = demo_config(tmp_path / "old", _NoCoSigner(), {})
    Demo().prepare(config, lambda line: None)
    old = config.storage.data_dir / "identities" / f"{DEMO_INVESTIGATOR}.identity"
    old.write_text("{}")
    lines = []
    Demo().prepare(config, lines.append)
    assert lines[1] == (f"WARNING: {old} is an investigator's private key inside the data directory (an earlier "
                        "version put it there): move it off this host, or delete it")
    # and a file that exists is never overwritten
    config, _ = demo_config(tmp_path / "third", _NoCoSigner(), {})
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        Demo(away).prepare(config, lambda line: None)


def test_each_demo_identity_has_its_own_passphrase_shown_once(tmp_path):
    config, _ = demo_config(tmp_path, _NoCoSigner(), {})
    lines: list[str] = []
    Demo(tmp_path / "investigator.identity").prepare(config, lines.append)
    shown = passphrases(lines)
    assert set(shown) == {DEMO_OFFICER, DEMO_VIEWER, DEMO_INVESTIGATOR}
    assert len({phrase for _, phrase in shown.values()}) == 3
    assert all(len(phrase) >= 12 for _, phrase in shown.values())
    for name, (file, phrase) in shown.items():
        assert PrivateIdentity.load(file, phrase).public.name == name
    # one person's passphrase opens nobody else's file
    (officer, officer_phrase), (viewer, viewer_phrase) = shown[DEMO_OFFICER], shown[DEMO_VIEWER]
    for file, phrase in ((officer, viewer_phrase), (viewer, officer_phrase),
                         (shown[DEMO_INVESTIGATOR][0], officer_phrase)):
        with pytest.raises(Exception, match="wrong passphrase or not a valid identity file"):
            PrivateIdentity.load(file, phrase)
    # shown once: a later start prints the banner and no passphrase
    later: list[str] = []
    Demo().prepare(config, later.append)
    assert later == [BANNER]


class _NoCoSigner:
    """For tests that only prepare the demo's people: an ``escrow`` section that is never contacted."""

    def config(self) -> dict:
        return {"address": "http://127.0.0.1:9", "token_file": __file__}


# --- the demo's viewer token and grants (the real `serve`) -------------------------------------------------

def test_a_second_start_prints_no_new_token_while_one_is_valid(tmp_path, monkeypatch, openbao):
    """The first start issues demo-viewer a day's token (audit-logged off the event loop) and keeps it
    0600 in the data directory; the next start prints the same one; once it is revoked, a new one."""
    import asyncio

    from keys import AuditLog

    appended = []
    real = AuditLog.append

    def append(self, actor, signer, action, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            appended.append((action, "on the event loop"))
        except RuntimeError:
            appended.append((action, "off the loop"))
        return real(self, actor, signer, action, *args, **kwargs)

    monkeypatch.setattr(AuditLog, "append", append)
    with Running(tmp_path, openbao, {}, demo=Demo()) as first:
        token = first.viewer_token
        assert token and cameras(first, token) == ["demo"]
    assert first.lines[0] == BANNER
    assert any(line.startswith("privacy-gateway serving 1 camera(s)") and "the demo: not for production" in line
               for line in first.lines)
    assert any(line.startswith(f"  {DEMO_VIEWER}'s token: new, valid until ") for line in first.lines)
    kept = tmp_path / "data" / TOKEN_FILE
    assert kept.read_text().strip() == token and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert ("issue-token", "off the loop") in appended and ("issue-token", "on the event loop") not in appended

    with Running(tmp_path, openbao, {}, demo=Demo()) as second:
        assert second.viewer_token == token  # the same URL, no new token
        assert passphrases(second.lines) == {} and second.lines[0] == BANNER
        assert any(line.startswith(f"  {DEMO_VIEWER}'s token: the one issued at an earlier start")
                   for line in second.lines)
        store = second.gateway.access.store
        assert [t.issued_by for t in store.tokens(DEMO_VIEWER)] == ["gateway"]
        # revoked by an officer: the next start's token is a new one
        token_id = token.split("_")[1]
        assert second.call("DELETE", f"/api/tokens/{token_id}")[0] == 200
        renewed = second.gateway.demo_viewer_token()
        assert renewed.new and renewed.token != token and kept.read_text().strip() == renewed.token
        assert cameras(second, renewed.token) == ["demo"] and second.get("/api/cameras", token=token)[0] == 401
    issued = [e for e in audit(tmp_path) if e["action"] == "issue-token" and e["details"].get("via") == "demo start-up"]
    assert len(issued) == 2  # the first start's and the one after the revocation; none by the second start


def test_an_officers_narrowing_of_the_demo_viewer_survives_a_restart(tmp_path, capsys, monkeypatch, openbao):
    """demo-viewer is granted every camera once, when the demo is created; an officer narrows it (over
    HTTP, with a token got by the real `token` command and the officer's printed passphrase); the next
    start keeps the narrowing, and prints no token URL for the camera taken away."""
    with Running(tmp_path, openbao, {"side": str(SAMPLE)}, demo=Demo()) as first:
        store = first.gateway.access.store
        assert store.granted(DEMO_VIEWER) == {"demo", "side"}
        assert [e["details"] for e in audit(tmp_path) if e["action"] == "grant-cameras"] == [
            {"identity": DEMO_VIEWER, "cameras": ["demo", "side"], "by": "gateway", "via": "demo set-up"}]
        officer, phrase = passphrases(first.lines)[DEMO_OFFICER]
        monkeypatch.setenv("PRIVACY_GATEWAY_PASSPHRASE_DEMO_OFFICER", phrase)
        capsys.readouterr()
        assert main(["token", "--gateway", f"http://127.0.0.1:{first.port}", "--identity", str(officer)]) == 0
        token = capsys.readouterr().out.strip()
        first.token = token  # call() uses it
        assert first.call("PUT", f"/api/identities/{DEMO_VIEWER}/cameras", {"cameras": ["demo"]})[0] == 200
        viewer = first.viewer_token
    with Running(tmp_path, openbao, {"side": str(SAMPLE)}, demo=Demo()) as second:
        assert second.gateway.access.store.granted(DEMO_VIEWER) == {"demo"}
        assert second.viewer_token == viewer
        assert cameras(second, viewer) == ["demo"]
    side = [line for line in second.lines if line.startswith("  viewer: ") and "/view/side" in line]
    assert side and "#token=" not in side[0] and f"{DEMO_VIEWER} is not granted this camera" in side[0]
    assert len([e for e in audit(tmp_path) if e["action"] == "grant-cameras"]) == 2  # the set-up's, the officer's
