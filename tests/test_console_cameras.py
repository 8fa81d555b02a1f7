"""The console's camera forms in headless Chromium against a real `serve` (issue 15): an officer adds a
camera (a real RTSP camera; an invalid field first, its error shown beside it and nothing added),
sees its redacted preview, edits it and removes it after confirming, all through /api/cameras.
Screenshots at 1280x800 and 390x844 go to the test output directory (CONSOLE_SHOTS)."""

import json
import time

import pytest
from rtsp_support import rtsp_camera
from test_console import console, open_console, shots  # noqa: F401  (fixtures, and the page opener)

pytestmark = pytest.mark.realtime


def press(tab, key: str, code: str, keycode: int) -> None:
    """A key pressed on the keyboard (down and up), to whatever has the focus."""
    for kind in ("keyDown", "keyUp"):
        tab.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": keycode,
                                            **({"text": "\r"} if kind == "keyDown" and key == "Enter" else {})})


def field_error(tab, form: str, path: str) -> str:
    return tab.wait_for(f"""(() => {{ const f = document.querySelector('{form} [data-field="{path}"]');
        const e = f && f.querySelector('.field-error'); return e && e.textContent; }})()""", timeout=15)


def test_an_officer_adds_edits_and_removes_a_camera_in_the_browser(console, shots, camera_clip):
    running, browser, _ = console
    clip, _, _ = camera_clip
    with rtsp_camera(clip, loop=True) as camera:
        tab = open_console(browser, running, running.token)
        try:
            tab.wait_for("document.querySelector('#camera-add') !== null", timeout=15)
            # every field has a label; the form opens from the keyboard
            assert tab.evaluate("""[...document.querySelectorAll('#camera-add input, #camera-add select')]
                .every(e => document.querySelector('label[for="' + CSS.escape(e.id) + '"]'))""")
            tab.evaluate("document.querySelector('details.camera-add > summary').focus()")
            press(tab, "Enter", "Enter", 13)
            tab.wait_for("document.querySelector('details.camera-add').open")
            # an invalid field: the API's error appears beside it, and nothing is added
            tab.evaluate(f"""(() => {{
                document.getElementById('add-id').value = 'porch';
                document.getElementById('add-source').value = {json.dumps(camera.url)};
                document.getElementById('add-holdback_ms').value = '5';
                document.getElementById('add-renditions').value = '["h264"]'; }})()""")
            tab.evaluate("document.getElementById('add-id').focus()")
            press(tab, "Enter", "Enter", 13)  # Enter in a field submits its form
            note = field_error(tab, "#camera-add", "holdback_ms")
            assert "greater than or equal to 20" in note
            assert tab.evaluate("""document.querySelector('#camera-add [data-field="holdback_ms"]')
                .getAttribute('aria-invalid')""") == "true"
            tab.screenshot(shots / "console-camera-add-error.png")
            assert "porch" not in running.gateway.cameras
            # corrected: added, and its redacted preview plays in its tile
            tab.evaluate("""(() => { document.getElementById('add-holdback_ms').value = '1500';
                document.querySelector('#camera-add button[type=submit]').click(); })()""")
            tab.wait_for("document.querySelector('.tile[data-camera=porch]') !== null", timeout=60)
            status, answer = running.call("GET", "/api/cameras/porch")
            assert status == 200 and answer["config"]["source"] == camera.url
            assert answer["config"]["holdback_ms"] == 1500 and answer["config"]["renditions"] == ["h264"]
            tab.wait_for("document.querySelector('.tile[data-camera=porch] video').videoWidth > 0", timeout=120)
            deadline = time.monotonic() + 120  # for the screenshot: until it shows redacted frames, not warm-up blanks
            while json.loads(running.get("/health")[1])["cameras"]["porch"]["released"] < 30:
                assert time.monotonic() < deadline, "the added camera released no redacted frame"
                time.sleep(0.5)
            time.sleep(1.0)
            tab.screenshot(shots / "console-cameras-added.png")
            tab.evaluate("document.querySelector('.tile[data-camera=porch] details.camera-edit').open = true")
            tab.screenshot(shots / "console-camera-edit-phone.png", width=390, height=844)
            # edited: the form shows its settings; saved, the camera runs with the new ones
            assert tab.evaluate("document.getElementById('edit-porch-holdback_ms').value") == "1500"
            tab.evaluate("""(() => { window.before = document.querySelector('.tile[data-camera=porch]');
                document.getElementById('edit-porch-holdback_ms').value = '1200';
                document.querySelector('.tile[data-camera=porch] form button[type=submit]').click(); })()""")
            tab.wait_for("""(() => { const tile = document.querySelector('.tile[data-camera=porch]');
                return tile && tile !== window.before; })()""", timeout=60)  # the page, reloaded
            assert tab.evaluate("document.getElementById('edit-porch-holdback_ms').value") == "1200"
            assert running.call("GET", "/api/cameras/porch")[1]["config"]["holdback_ms"] == 1200
            assert running.gateway.cameras["porch"].config.holdback_ms == 1200
            # removed, after the confirmation (open_console answers yes)
            tab.evaluate("document.querySelector('.tile[data-camera=porch] button.danger').click()")
            tab.wait_for("document.querySelector('.tile[data-camera=porch]') === null"
                         " && document.getElementById('camera-grid') !== null", timeout=60)
            assert running.call("GET", "/api/cameras/porch")[0] == 404
            assert "porch" not in running.gateway.cameras
            assert [e["details"]["by"] for e in running.call("GET", "/api/audit")[1]["entries"]
                    if e["action"] in ("add-camera", "edit-camera", "remove-camera")
                    and e["details"]["camera"] == "porch"] == ["officer"] * 3
        finally:
            tab.close()
