"""Reconnect pacing: exponential, jittered, capped, reset by a welcome."""

from __future__ import annotations

from improto.client.backoff import Backoff, is_final_close


def test_delays_double_up_to_the_cap_within_the_jitter_band() -> None:
    low, high = Backoff(random=lambda: 0.0), Backoff(random=lambda: 0.999999)
    lows = [low.next_delay() for _ in range(10)]
    highs = [high.next_delay() for _ in range(10)]
    assert lows[:4] == [0.25, 0.5, 1.0, 2.0]
    assert [round(h, 3) for h in highs[:4]] == [0.5, 1.0, 2.0, 4.0]
    assert lows[-1] == 15.0 and round(highs[-1], 3) == 30.0  # capped at 30 s
    assert all(a <= b for a, b in zip(lows, lows[1:], strict=False))


def test_jitter_spreads_clients() -> None:
    values = iter([0.1, 0.9])
    a, b = Backoff(random=lambda: next(values)), Backoff(random=lambda: 0.5)
    assert a.next_delay() != b.next_delay()


def test_many_attempts_do_not_overflow_and_reset_starts_over() -> None:
    backoff = Backoff(random=lambda: 0.0, cap=8)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 4.0
    backoff.reset()
    assert backoff.next_delay() == 0.25


def test_auth_and_policy_closes_are_final() -> None:
    assert is_final_close(4401) and is_final_close(4403) and is_final_close(1008)
    assert not any(is_final_close(code) for code in (1000, 1001, 1006, 1011, None))
