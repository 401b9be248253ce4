"""Holding back a device's batches after the broker had no subscriber for them."""

from __future__ import annotations

import pytest

from edge.config import BackoffSettings
from edge.gateway.unrouted import UnroutedHolds

SAW = ("gw-1", "saw")
KILN = ("gw-1", "kiln")


def holds() -> UnroutedHolds:
    return UnroutedHolds(BackoffSettings(initial_s=0.5, max_s=2.0, multiplier=2.0))


def test_each_new_try_waits_longer_up_to_the_bound() -> None:
    unrouted = holds()
    delays = []
    now = 0.0
    for _ in range(5):
        delays.append(unrouted.unrouted(SAW, published_at=now, now=now))
        now += delays[-1]  # published again once the hold is over
    assert delays == pytest.approx([0.5, 1.0, 2.0, 2.0, 2.0])


def test_batches_in_flight_before_the_hold_do_not_lengthen_it() -> None:
    unrouted = holds()
    assert unrouted.unrouted(SAW, published_at=0.0, now=1.0) == pytest.approx(0.5)
    # Two more of the same wave, published before the first answer came.
    assert unrouted.unrouted(SAW, published_at=0.1, now=1.1) == pytest.approx(0.4)
    assert unrouted.unrouted(SAW, published_at=0.2, now=1.2) == pytest.approx(0.3)
    assert unrouted.held(1.2) == {SAW: pytest.approx(1.5)}
    assert unrouted.episode_batches == 3


def test_only_the_answered_device_is_held_and_only_until_its_time() -> None:
    unrouted = holds()
    unrouted.unrouted(SAW, published_at=0.0, now=0.0)
    assert unrouted.held(0.4) == {SAW: 0.5}
    assert KILN not in unrouted.held(0.4)
    assert unrouted.held(0.5) == {}


def test_a_delivery_ends_the_episode_and_resets_the_device() -> None:
    unrouted = holds()
    unrouted.unrouted(SAW, published_at=0.0, now=0.0)
    unrouted.unrouted(SAW, published_at=1.0, now=1.0)
    assert unrouted.active
    assert unrouted.delivered(SAW) == 2
    assert not unrouted.active
    assert unrouted.delivered(SAW) == 0
    # The next episode starts from the first delay again.
    assert unrouted.unrouted(SAW, published_at=5.0, now=5.0) == pytest.approx(0.5)
