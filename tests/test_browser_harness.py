"""The test harness's own Chromium driver works from a fresh process, not only inside pytest.

A script that drives the viewer outside pytest starts with nothing open beyond 0, 1 and 2, so
its first ``os.pipe()`` returns descriptors 3 and 4: exactly the ones Chromium's DevTools pipe
must end up on, which a naive shell redirect closes again.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from peers import chromium_missing, require

pytestmark = pytest.mark.realtime

TESTS = Path(__file__).resolve().parent


def test_browser_starts_in_a_fresh_process_whose_first_pipe_is_3_and_4():
    require(chromium_missing())
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "r, w = os.pipe(); os.close(r); os.close(w)\n"
        "assert (r, w) == (3, 4), (r, w)  # what Browser's own os.pipe() will get\n"
        "from browser import Browser\n"
        "with Browser() as browser:\n"
        "    print(browser.version)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            close_fds=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Chrome" in result.stdout
