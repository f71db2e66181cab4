"""Token-bucket rate limiter with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.errors import RateLimited
from wsproxy.policy.ratelimit import RateLimiter


def drain(limiter: RateLimiter, principal: str, now: float) -> int:
    """Take tokens until refused; returns how many were granted."""
    n = 0
    while True:
        try:
            limiter.check(principal, now)
        except RateLimited:
            return n
        n += 1


@pytest.mark.parametrize("per_minute", [0, -5])
def test_disabled(per_minute: int) -> None:
    limiter = RateLimiter(per_minute)
    assert not limiter.enabled
    for _ in range(1000):
        limiter.check("p", 0.0)


def test_burst_then_refused_with_retry_after() -> None:
    limiter = RateLimiter(5)  # 5 per minute: burst 5, one token every 12 s
    assert drain(limiter, "p", 100.0) == 5
    with pytest.raises(RateLimited) as info:
        limiter.check("p", 100.0)
    err = info.value
    assert (err.status, err.code, err.type) == (429, "rate_limit_exceeded", "rate_limit_error")
    assert err.headers == {"retry-after": "12"}


def test_refill_at_the_configured_rate() -> None:
    limiter = RateLimiter(60)  # one token per second
    assert drain(limiter, "p", 0.0) == 60
    with pytest.raises(RateLimited):
        limiter.check("p", 0.5)
    limiter.check("p", 1.0)
    with pytest.raises(RateLimited):
        limiter.check("p", 1.0)
    assert drain(limiter, "p", 11.0) == 10


def test_refill_is_capped_at_the_burst() -> None:
    limiter = RateLimiter(10)
    limiter.check("p", 0.0)
    assert drain(limiter, "p", 3600.0) == 10


def test_principals_are_independent() -> None:
    limiter = RateLimiter(2)
    assert drain(limiter, "a", 0.0) == 2
    assert drain(limiter, "b", 0.0) == 2


def test_retry_after_is_at_least_one_second() -> None:
    limiter = RateLimiter(600)  # 10 per second
    drain(limiter, "p", 0.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("p", 0.05)
    assert info.value.headers["retry-after"] == "1"


def test_retrying_after_retry_after_succeeds() -> None:
    """Retry-After is a promise: a client that waits that long must get through. 20/min refills a
    token every 3 s; refused at t=1.8 the real wait is 1.2 s, so the header must not say 1."""
    limiter = RateLimiter(20)
    drain(limiter, "p", 0.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("p", 1.8)
    wait = int(info.value.headers["retry-after"])
    limiter.check("p", 1.8 + wait)


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(1, 600),
    used=st.integers(0, 50),
    elapsed=st.floats(0, 120, allow_nan=False),
)
def test_retry_after_property(per_minute: int, used: int, elapsed: float) -> None:
    limiter = RateLimiter(per_minute)
    drain(limiter, "p", 0.0)
    for _ in range(used):
        try:
            limiter.check("p", elapsed)
        except RateLimited as exc:
            limiter.check("p", elapsed + int(exc.headers["retry-after"]))
            return


def test_table_is_bounded() -> None:
    limiter = RateLimiter(10, max_principals=3)
    for i in range(50):
        limiter.check(f"p{i}", float(i))
    assert len(limiter._buckets) <= 3


def test_overflow_drops_idle_buckets_before_busy_ones() -> None:
    """The module docstring: idle buckets (full again) are dropped first when the table overflows.
    Dropping a drained bucket instead hands that principal a fresh burst."""
    limiter = RateLimiter(60, max_principals=2)  # burst 60, one token per second
    assert drain(limiter, "busy", 0.0) == 60
    limiter.check("idle", 0.0)  # 59 left, full again one second later
    limiter.check("newcomer", 1.0)  # overflow: "idle" is full, "busy" holds one token
    limiter.check("busy", 1.0)  # its one refilled token
    with pytest.raises(RateLimited):
        limiter.check("busy", 1.0)


def test_waiting_exactly_the_retry_after_is_enough_despite_float_rounding() -> None:
    # 68.08648495851436 + 60 s at 1/60 token per second refills 0.9999999999999... of a token.
    limiter = RateLimiter(1)
    limiter.check("p", 68.08648495851436)
    with pytest.raises(RateLimited) as exc:
        limiter.check("p", 68.08648495851436)
    limiter.check("p", 68.08648495851436 + int(exc.value.headers["retry-after"]))
