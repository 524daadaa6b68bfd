"""The server's clocks: the system one is `time` itself, a manual one moves only when told to."""

from __future__ import annotations

import time

import pytest

from bankgate.clock import SYSTEM, ManualClock


def test_the_system_clock_hands_out_the_time_functions_themselves() -> None:
    assert SYSTEM.now is time.time  # no wrapper on the hot paths
    assert SYSTEM.monotonic is time.monotonic


def test_a_manual_clock_moves_both_clocks_only_when_advanced() -> None:
    clock = ManualClock(1_800_000_000.0)
    before = clock.monotonic()
    assert clock.now() == 1_800_000_000.0
    time.sleep(0.01)
    assert clock.now() == 1_800_000_000.0 and clock.monotonic() == before
    clock.advance(90.5)
    assert clock.now() == 1_800_000_090.5
    assert clock.monotonic() == before + 90.5


def test_a_manual_clock_starts_at_the_machine_time_and_never_goes_back() -> None:
    clock = ManualClock()
    assert abs(clock.now() - time.time()) < 5
    with pytest.raises(ValueError, match="forward only"):
        clock.advance(-1)
