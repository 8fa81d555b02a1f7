"""The officer's console in headless Chromium against a real `serve` (RTSP camera, real detector, vault,
co-signer): sign-in, the camera grid playing its redacted preview, the policy editor (errors beside
the field, store, diff, activate), the audit page, and what a viewer's token gets (nothing).
Screenshots of every page go to the test output directory (CONSOLE_SHOTS, default: tmp)."""

import json
import os
from pathlib import Path

import pytest
from browser import Browser
from peers import chromium_missing, require
from rtsp_support import rtsp_camera
from serve_harness import Running

pytestmark = pytest.mark.realtime


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go: $CONSOLE_SHOTS if set (docs/console/ keeps two for the README)."""
    where = os.environ.get("CONSOLE_SHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("console-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def console(camera_clip, tmp_path_factory, openbao):
    """A running gateway with one RTSP camera, and a browser."""
    require(chromium_missing())
    clip, _, _ = camera_clip
    tmp = tmp_path_factory.mktemp("console")
    with rtsp_camera(clip, loop=True) as camera, Running(tmp, openbao, {"lobby": camera.url}) as running:
        running.wait_healthy()
        with Browser() as browser:
            yield running, browser, tmp


def open_console(browser, running, token, page="cameras"):
    tab = browser.new_page(f"http://127.0.0.1:{running.port}/console/{page}#token={token}")
    tab.evaluate("window.confirm = () => true")  # activation asks; the test says yes
    return tab


def test_an_officer_sees_every_camera_live_with_its_state(console, shots):
    running, browser, _ = console
    tab = open_console(browser, running, running.token)
    try:
        tab.wait_for("document.querySelector('#nav a[data-page=policies]') !== null")
        pages = tab.evaluate("[...document.querySelectorAll('#nav a')].map(a => a.dataset.page)")
        assert pages == ["cameras", "policies", "audit", "people", "recordings", "requests"]
        assert tab.evaluate("document.getElementById('who').textContent").startswith("officer (privacy-officer)")
        tab.wait_for("document.querySelector('.tile[data-camera=lobby] video').videoWidth > 0", timeout=30)
        tab.wait_for("document.querySelector('.tile [data-stat=released]').textContent.endsWith('/s')", timeout=15)
        released = float(tab.evaluate("document.querySelector('.tile [data-stat=released]').textContent")[:-2])
        assert released > 1  # the camera runs at 30 fps; some frames may be blanked on a loaded machine
        tab.screenshot(shots / "console-cameras.png")
    finally:
        tab.close()


def test_an_invalid_policy_shows_the_error_beside_its_field_and_stores_nothing(console, shots):
    running, browser, _ = console
    versions = len(running.call("GET", "/api/policies")[1]["policies"])
    tab = open_console(browser, running, running.token, "policies")
    try:
        tab.wait_for("document.querySelector('#policy-form') !== null")
        tab.evaluate("""(() => {
            document.getElementById('f-classes.face.strength').value = '5';
            document.querySelector('#policy-form button[type=submit]').click(); })()""")
        note = tab.wait_for("""(() => { const f = document.querySelector('[data-field="classes.face.strength"]');
            const e = f && f.querySelector('.field-error'); return e && e.textContent; })()""")
        assert "less than or equal to 1" in note
        assert tab.evaluate("""document.querySelector('[data-field="classes.face.strength"]')
            .getAttribute('aria-invalid')""") == "true"
        tab.screenshot(shots / "console-policy-error.png")
        assert len(running.call("GET", "/api/policies")[1]["policies"]) == versions
    finally:
        tab.close()


def test_an_officer_edits_stores_diffs_and_activates_a_policy_in_the_browser(console, shots):
    running, browser, tmp = console
    before = running.call("GET", "/api/cameras/lobby/policy")[1]["version"]
    tab = open_console(browser, running, running.token, "policies?camera=lobby")
    try:
        tab.wait_for("document.querySelector('#policy-form') !== null")
        tab.evaluate("""(() => {
            document.getElementById('f-classes.face.method').value = 'pixelate';
            document.getElementById('f-name').value = 'lobby-pixelated';
            document.querySelector('#policy-form button[type=submit]').click(); })()""")
        tab.wait_for("document.getElementById('policy-diff') !== null", timeout=15)
        diff = tab.evaluate("document.getElementById('policy-diff').textContent")
        assert "+    method: pixelate" in diff and "-    method: blur" in diff
        tab.screenshot(shots / "console-policies.png")
        version = tab.evaluate("new URLSearchParams(location.search).get('version')")
        assert version and version != before
        tab.evaluate("document.getElementById('activate').click()")
        tab.wait_for("document.getElementById('policy-diff') === null"
                     " && document.querySelector('#history-title + div table') !== null", timeout=30)
        assert running.call("GET", "/api/cameras/lobby/policy")[1]["version"] == version
        row = tab.evaluate("document.querySelector('#history-title + div tbody tr').textContent")
        assert "officer" in row and version[:12] in row and "activated" in row
    finally:
        tab.close()


def test_the_audit_page_filters_the_log_and_shows_it_verifies(console, shots):
    running, browser, _ = console
    tab = open_console(browser, running, running.token, "audit?action=store-policy")
    try:
        tab.wait_for("document.getElementById('audit-log') !== null")
        assert "verifies" in tab.evaluate("document.getElementById('audit-state').textContent")
        actions = tab.evaluate("[...document.querySelectorAll('#audit-log tbody tr')].map(r => r.dataset.action)")
        assert actions and set(actions) == {"store-policy"}
        tab.screenshot(shots / "console-audit.png")
        tab.screenshot(shots / "console-audit-phone.png", width=390, height=844)
    finally:
        tab.close()


def test_a_viewer_token_gets_no_console_page_and_no_console_api(console):
    running, browser, _ = console
    for page in ("cameras", "policies", "audit", "recordings", "requests"):
        status, body = running.get(f"/console/part/{page}", token=running.viewer_token)
        assert status == 403 and "may use no page of the console" in json.loads(body)["error"]
    assert running.get("/console/part/cameras", token=None)[0] == 401
    for path in ("/api/policies", "/api/audit", "/api/identities"):  # what the console pages call
        assert running.get(path, token=running.viewer_token)[0] == 403, path
    tab = open_console(browser, running, running.viewer_token)
    try:
        text = tab.wait_for("(() => { const s = document.querySelector('main .status.error');"
                            " return s && s.textContent; })()")
        assert "may use no page of the console" in text
        assert tab.evaluate("document.querySelectorAll('#nav a').length") == 0
    finally:
        tab.close()


def test_console_pages_carry_a_strict_content_security_policy(console):
    running, _, _ = console
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{running.port}/console") as reply:
        policy = reply.headers["Content-Security-Policy"]
        page = reply.read().decode()
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page and "<style" not in page and " style=" not in page  # nothing inline
