"""The console's People and access page in headless Chromium against a real `serve` (RTSP camera, real
detector, vault, co-signer): an officer enrols a person by the public half of keys made elsewhere,
grants a camera, mints a token, and revoking that token in the console ends a live WHEP viewer in
another tab (measured, printed, a generous bound asserted). A non-officer gets nothing. And
`privacy-gateway console` opens the console signed in with a token its signed request got.
Screenshots go to the `shots` directory (CONSOLE_SHOTS, default: tmp)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_console
from test_console import open_console

from gateway.cli import main
from keys import PrivateIdentity

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[1]
console = test_console.console  # the fixture: serve with an RTSP camera "lobby", and a browser
shots = test_console.shots
#: seconds from the revoke click until the viewer's peer connection leaves "connected": generous
#: (the gateway re-checks sessions every second; a loaded CI machine may be slow to show it)
REVOKE_BOUND = 15.0


#: in the viewer's tab: when its peer connection leaves "connected" (polled: close() fires no event), and
#: when it last presented a frame
WATCH = """(() => { const pc = whepSession.pc, video = document.getElementById('video');
    window.leftAt = null;
    const check = () => { if (window.leftAt === null && pc.connectionState !== 'connected') {
      window.leftAt = Date.now(); window.leftAs = pc.connectionState; } };
    pc.addEventListener('connectionstatechange', check);
    setInterval(check, 20);
    const frame = () => { window.lastFrameAt = Date.now(); video.requestVideoFrameCallback(frame); };
    video.requestVideoFrameCallback(frame);
    return true; })()"""


def click(tab, selector: str) -> None:
    tab.evaluate(f"document.querySelector({json.dumps(selector)}).click(), true")


def notice(tab, expected: str) -> str:
    """The page's notice once it says ``expected`` (the one of an earlier action may still be shown)."""
    return tab.wait_for(f"""(() => {{ const p = document.querySelector('#people-notice p');
        return p && p.textContent.includes({json.dumps(expected)}) && p.textContent; }})()""", timeout=15)


def test_an_officer_enrols_grants_mints_and_a_revoke_ends_the_live_viewer(console, shots):
    running, browser, _ = console
    nina = PrivateIdentity.generate("nina", ["investigator"])  # made on her machine; she asks to investigate
    tab = open_console(browser, running, running.token, "people")
    viewer = None
    try:
        tab.wait_for("document.querySelector('#enrol-form') !== null")
        assert tab.evaluate("document.querySelector('#nav a[aria-current=page]').dataset.page") == "people"
        # a public identity with a key missing: the API's error beside the field, nothing enrolled
        tab.evaluate("""(() => { const f = document.getElementById('enrol-identity');
            f.value = '{"name": "nina", "roles": ["viewer"], "hpke": "x"}'; })()""")
        click(tab, "#enrol-form button[type=submit]")
        error = tab.wait_for("""(() => { const e = document.querySelector('[data-field="identity"] .field-error');
            return e && e.textContent; })()""")
        assert "signing: missing" in error
        # her public identity, as `keys public` prints it; the officer makes her a viewer
        tab.evaluate(f"""(() => {{ document.getElementById('enrol-identity').value = {json.dumps(json.dumps(nina.public.to_json(), indent=2))};
            document.querySelector('#enrol-form input[name=roles][value=viewer]').checked = true; }})()""")
        click(tab, "#enrol-form button[type=submit]")
        notice(tab, f"Enrolled nina (viewer). Key fingerprint {nina.public.fingerprint}")
        card = "article.person[data-identity=nina]"
        assert tab.evaluate(f"document.querySelector('{card}').textContent").count(nina.public.fingerprint) == 1
        assert [i for i in running.call("GET", "/api/identities")[1]["identities"] if i["name"] == "nina"] == [
            {"name": "nina", "roles": ["viewer"], "post_quantum": False, "fingerprint": nina.public.fingerprint,
             "cameras": []}]

        # grant her the camera
        tab.evaluate(f"document.querySelector('{card} input[name=cameras][value=lobby]').checked = true")
        click(tab, f"{card} form.grants button[type=submit]")
        assert notice(tab, "nina may now use") == "nina may now use: lobby"
        assert tab.evaluate(f"document.querySelector('{card} input[value=lobby]').checked") is True
        assert running.gateway.access.store.granted("nina") == {"lobby"}

        # the officer's own token may not mint for the officer: the API's refusal is shown
        tab.evaluate("document.getElementById('mint-identity').value = 'officer'")
        click(tab, "#mint-form button[type=submit]")
        refusal = tab.wait_for("(() => { const r = document.querySelector('#mint-form .result.error');"
                               " return r && r.textContent; })()")
        assert "a token cannot issue tokens for its own identity" in refusal

        # mint one for nina on lobby, for an hour: shown once, with the viewer URL
        tab.evaluate("""(() => { document.getElementById('mint-identity').value = 'nina';
            document.querySelector('#mint-form input[name=cameras][value=lobby]').checked = true;
            document.getElementById('mint-ttl').value = '3600'; })()""")
        click(tab, "#mint-form button[type=submit]")
        token = tab.wait_for("(() => { const t = document.getElementById('minted-token'); return t && t.value; })()",
                             timeout=15)
        url = tab.evaluate("document.getElementById('minted-url').href")
        assert url == f"http://127.0.0.1:{running.port}/view/lobby#token={token}"
        assert tab.evaluate("document.activeElement.id") == "minted-token"  # keyboard users land on it
        status, body = running.get("/api/whoami", token=token)
        assert status == 200 and json.loads(body)["name"] == "nina" and json.loads(body)["cameras"] == ["lobby"]
        token_id = token.split("_")[1]
        row = f'#tokens tr[data-token="{token_id}"]'
        assert tab.evaluate(f"document.querySelector('{row}').dataset.state") == "live"
        tab.screenshot(shots / "console-people.png")
        tab.screenshot(shots / "console-people-phone.png", width=390, height=844)

        # nina watches in another tab, with that token
        viewer = browser.new_page(url)
        viewer.wait_for("window.whepSession && whepSession.pc.connectionState === 'connected'", timeout=60)
        viewer.wait_for("document.getElementById('video').readyState >= 2", timeout=30)
        before = viewer.evaluate("document.getElementById('video').currentTime")
        viewer.wait_for(f"document.getElementById('video').currentTime > {before}", timeout=20)  # it plays
        viewer.evaluate(WATCH)
        # the officer revokes it in the console: the viewer's session ends
        clicked = tab.evaluate(f"(() => {{ const t = Date.now(); document.querySelector('{row} button').click();"
                               " return t; })()")
        deadline = time.monotonic() + REVOKE_BOUND + 30
        while running.gateway.whep.viewers("lobby"):
            assert time.monotonic() < deadline, "the gateway kept the revoked token's WHEP session"
            time.sleep(0.02)
        ended = time.time() * 1000
        left = viewer.wait_for("window.leftAt", timeout=REVOKE_BOUND + 30)
        seconds = (left - clicked) / 1000
        state, last = viewer.evaluate("[window.leftAs, window.lastFrameAt]")
        print(f"\nrevoke click -> the gateway ended the WHEP session: {(ended - clicked) / 1000:.2f} s; "
              f"the viewer's last frame: {(last - clicked) / 1000:.2f} s; its peer connection left 'connected' "
              f"({state}): {seconds:.2f} s")
        assert viewer.evaluate("document.getElementById('status').textContent") == \
            "lobby: ended by the gateway (access revoked, or the session closed)"
        assert 0 <= seconds < REVOKE_BOUND
        notice(tab, f"Token {token_id[:6]}… of nina revoked: its live sessions end")
        assert tab.evaluate(f"document.querySelector('{row}').dataset.state") == "revoked"
        status, body = running.get("/api/whoami", token=token)
        assert (status, json.loads(body)["error"]) == (401, "token revoked")

        # nina leaves (removed: her keys could come back); the page says what it did
        click(tab, f"{card} button.remove")
        text = notice(tab, "nina: removed;")
        assert text.startswith("nina: removed; 0 token(s) revoked.") and "its OpenBao access" in text
        assert tab.evaluate(f"document.querySelector('{card}')") is None
        assert "nina" not in running.gateway.access.identities()
        actions = [e["action"] for e in running.call("GET", "/api/audit")[1]["entries"]]
        for action in ("enrol-identity", "grant-cameras", "issue-token", "revoke-token", "remove-identity"):
            assert action in actions, action
    finally:
        if viewer is not None:
            viewer.close()
        tab.close()


def test_a_non_officer_gets_403_for_the_page_and_its_api(console):
    running, browser, _ = console
    store = running.gateway.access.store
    investigator, _ = store.issue("investigator", None, 600.0, "test")
    public = json.dumps({"identity": PrivateIdentity.generate("mallory", ["privacy-officer"]).public.to_json()})
    for token in (running.viewer_token, investigator):
        status, body = running.get("/console/part/people", token=token)
        assert status == 403, body
        for method, path, data in (("GET", "/api/identities", None), ("POST", "/api/identities", public),
                                   ("DELETE", "/api/identities/officer", None),
                                   ("POST", "/api/identities/officer/revoke", None),
                                   ("PUT", "/api/identities/viewer/cameras", '{"cameras": ["lobby"]}'),
                                   ("POST", "/api/tokens", '{"identity": "officer"}')):
            reply = _request(running, method, path, data, token)
            assert reply == 403, (method, path, reply)
        assert _request(running, "DELETE", f"/api/tokens/{running.token.split('_')[1]}", None, token) == 404
    assert json.loads(running.get("/console/part/people", token=investigator)[1])["error"] == \
        "investigator may not open the console's People and access page"
    assert "mallory" not in running.gateway.access.identities()
    assert running.get("/api/whoami")[0] == 200  # the officer's token lives on
    tab = open_console(browser, running, running.viewer_token, "people")
    try:
        text = tab.wait_for("(() => { const s = document.querySelector('main .status.error');"
                            " return s && s.textContent; })()")
        assert "may use no page of the console" in text
        assert tab.evaluate("document.querySelector('#enrol-form')") is None
    finally:
        tab.close()


def _request(running, method, path, data, token) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{running.port}{path}", method=method,
                                     data=None if data is None else data.encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_console_command_signs_in_with_the_identity_key_and_opens_the_browser(console, tmp_path, capsys,
                                                                                  monkeypatch):
    running, browser, _ = console
    officer = running.people["officer"]
    gateway = f"http://127.0.0.1:{running.port}"
    # a browser that writes down what it is asked to open (webbrowser runs $BROWSER with the URL)
    opened = tmp_path / "opened.txt"
    fake = tmp_path / "fake-browser"
    fake.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {opened}\n")
    fake.chmod(0o755)
    env = {**os.environ, officer.variable: officer.passphrase, "BROWSER": str(fake)}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "console", "--identity", str(officer.file),
                             "--gateway", gateway + "/"], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith(f"{gateway}/console#token=pgw_") and "\n" not in url
    assert opened.read_text() == url
    assert "token for officer (every camera it may use), expires" in result.stderr
    token = url.split("#token=")[1]
    status, body = running.get("/api/whoami", token=token)
    assert status == 200 and json.loads(body)["name"] == "officer"
    issued = [e for e in running.call("GET", "/api/audit")[1]["entries"] if e["action"] == "issue-token"]
    assert issued[-1]["details"]["via"] == "signed request"  # its key asked, not a token

    tab = browser.new_page(url)  # the console, signed in for this tab, the token out of the address bar
    try:
        tab.wait_for("document.getElementById('who').textContent.startsWith('officer (privacy-officer)')", timeout=15)
        assert "token" not in tab.evaluate("location.href")
        assert tab.evaluate("sessionStorage.getItem('privacy-gateway-token')") == token
    finally:
        tab.close()

    # --no-browser only prints; a wrong passphrase is one line and exit 2, and opens nothing
    opened.unlink()
    monkeypatch.setenv(officer.variable, officer.passphrase)
    monkeypatch.setenv("BROWSER", str(fake))
    capsys.readouterr()
    assert main(["console", "--identity", str(officer.file), "--gateway", gateway, "--no-browser"]) == 0
    assert capsys.readouterr().out.startswith(f"{gateway}/console#token=pgw_") and not opened.exists()
    monkeypatch.setenv(officer.variable, "not the passphrase")
    assert main(["console", "--identity", str(officer.file), "--gateway", gateway]) == 2
    assert "cannot open identity" in capsys.readouterr().err and not opened.exists()
