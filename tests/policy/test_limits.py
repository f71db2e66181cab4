"""Limit arithmetic with an injected clock: windows, charges, retry-after, settlement."""

from __future__ import annotations

import pytest

from wsproxy.errors import RateLimited
from wsproxy.policy.keys import Limits
from wsproxy.policy.limits import (
    DAY,
    EXPIRY_SLACK,
    estimate_tokens,
    plan,
    rate_limited,
    retry_after,
    settlement,
    too_large,
    usage_tokens,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a minute and a day boundary


def test_no_limits_no_charges() -> None:
    assert plan("k", Limits(), T0, 100) == ()


def test_charges_name_their_window() -> None:
    charges = plan("alice", Limits(rpm=3, tpm=100, requests_per_day=10, tokens_per_day=1000), T0 + 61.5, 42)
    by_kind = {c.kind: c for c in charges}
    assert by_kind["rpm"].key == f"alice:rpm:{int(T0 // 60) + 1}" and by_kind["rpm"].amount == 1
    assert by_kind["tpm"].amount == 42 and by_kind["tpm"].limit == 100
    assert by_kind["rpm"].window_end == T0 + 120
    assert by_kind["rpd"].window_end == T0 + DAY and by_kind["tpd"].key == f"alice:tpd:{int(T0 // DAY)}"
    assert all(c.expires_at == c.window_end + EXPIRY_SLACK for c in charges)
    # The same minute, the same counter; the next minute, a new one.
    assert plan("alice", Limits(rpm=3), T0 + 119.9, 0)[0].key == by_kind["rpm"].key
    assert plan("alice", Limits(rpm=3), T0 + 120.0, 0)[0].key != by_kind["rpm"].key


@pytest.mark.parametrize(("elapsed", "expected"), [(0.0, 60), (0.2, 60), (59.0, 1), (59.9, 1), (30.5, 30)])
def test_retry_after_is_the_rest_of_the_window(elapsed: float, expected: int) -> None:
    charge = plan("k", Limits(rpm=1), T0 + elapsed, 0)[0]
    assert retry_after(charge, T0 + elapsed) == expected
    err = rate_limited(charge, T0 + elapsed)
    assert isinstance(err, RateLimited) and err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.headers == {"retry-after": str(expected)}
    # A client that waits exactly that long is in the next window.
    assert plan("k", Limits(rpm=1), T0 + elapsed + expected, 0)[0].key != charge.key


def test_a_reservation_above_the_limit_is_too_large() -> None:
    charges = plan("k", Limits(rpm=5, tpm=100), T0, 101)
    big = too_large(charges)
    assert big is not None and big.kind == "tpm"
    assert "Request too large" in rate_limited(big, T0, too_big=True).message
    assert too_large(plan("k", Limits(rpm=5, tpm=100), T0, 100)) is None


def test_settlement_within_the_window_corrects_both_ways() -> None:
    charges = plan("k", Limits(rpm=5, tpm=1000, tokens_per_day=10_000), T0 + 10, 300)
    adjust = settlement(charges, 120, T0 + 20)
    assert sorted((key.split(":")[1], delta) for key, delta, _ in adjust) == [("tpd", -180), ("tpm", -180)]
    more = settlement(charges, 450, T0 + 20)
    assert {delta for _, delta, _ in more} == {150}
    assert settlement(charges, 300, T0 + 20) == []


def test_settlement_after_the_window_charges_only_excess_to_the_current_one() -> None:
    charges = plan("k", Limits(tpm=1000), T0 + 10, 300)
    # A refund of an expired minute changes nothing.
    assert settlement(charges, 100, T0 + 70) == []
    [(key, delta, expires_at)] = settlement(charges, 500, T0 + 130)
    assert key == f"k:tpm:{int(T0 // 60) + 2}" and delta == 200 and expires_at == T0 + 180 + EXPIRY_SLACK


def test_estimates_and_usage_fields() -> None:
    assert estimate_tokens(0) == 0 and estimate_tokens(1) == 1 and estimate_tokens(400) == 100
    usage = {
        "input_tokens": 10,
        "output_tokens": 20,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens_details": {"reasoning_tokens": 7},
    }
    assert usage_tokens(usage) == (10, 20, 4, 7)
    assert usage_tokens(None) == (0, 0, 0, 0)
    malformed = {"input_tokens": "3", "output_tokens": -1, "input_tokens_details": []}
    assert usage_tokens(malformed) == (0, 0, 0, 0)
    assert usage_tokens({"input_tokens": True}) == (0, 0, 0, 0)
