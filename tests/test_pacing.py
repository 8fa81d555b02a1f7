"""Live pacing (gateway/egress/pacing.py): a detection group released at once leaves at the camera's pace."""

import time

from gateway.egress import Pacer


def test_live_frames_released_in_a_burst_leave_at_the_cameras_own_pace():
    """A detection group is released at once; the live renditions get it at the camera's rate."""
    pacer = Pacer()
    start = time.monotonic()
    for n in range(7):  # first a frame released 0.2 s after its media time, then six at once with it
        pacer.wait(10 + n / 30, start)
    paced = time.monotonic() - start
    assert paced >= 0.9 * 6 / 30  # spread over their own 200 ms, not sent in one go
    # a frame of the same burst whose turn has passed (the sink fell behind) is not held at all
    time.sleep(0.3)
    before = time.monotonic()
    pacer.wait(10 + 7 / 30, start)
    assert time.monotonic() - before < 0.1


def test_a_jump_of_the_media_clock_starts_the_schedule_afresh():
    """A reconnected camera's clock may leap ahead: its frames go at once, not seconds later."""
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0], sleep=lambda seconds: now.__setitem__(0, now[0] + seconds))
    pacer.wait(5.0, 100.0)  # a delay of 95 s between media time and release
    before = now[0]
    pacer.wait(50.0, 100.0)  # the camera's clock leaps 45 s ahead: held 45 s if the old delay still counted
    pacer.wait(50.0 + 1 / 30, 100.0)
    assert now[0] - before < 0.1
