"""Real peers the live tests drive (Chromium, GStreamer, FFmpeg through PyAV): present, or why not.

A test that needs a missing peer is skipped on a developer's machine, but fails under CI
(``CI=true``): there a skip would turn a broken live invariant into a green run. ``.ci/run``
installs every peer, so a failure there means the CI image lost one.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(missing: str | None) -> None:
    """Go on if ``missing`` is None; else skip (fail under CI) saying what is missing."""
    if missing is None:
        return
    if in_ci():
        pytest.fail(f"{missing} (CI=true: a missing peer fails the run instead of skipping it)")
    pytest.skip(missing)


def chromium_missing() -> str | None:
    if os.access(CHROMIUM, os.X_OK):
        return None
    return f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)"


def available(missing: str | None) -> bool:
    """For a check within a larger test: True if the peer is there; False (it is left out) if not,
    except under CI, where its absence fails the test."""
    if missing is not None and in_ci():
        pytest.fail(f"{missing} (CI=true: a missing peer fails the run instead of being left out)")
    return missing is None
