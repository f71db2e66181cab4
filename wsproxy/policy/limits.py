"""Limit arithmetic: windows, charges, reservations, settlement and retry-after (pure).

Limits are fixed-window counters: requests and tokens per minute (windows start on the minute of
the epoch) and per day (UTC days). A request is admitted when every counter it charges stays
within its limit; then all are charged at once (the store does the check-and-charge atomically,
see ``wsproxy.store``). A window's counter can reach its limit but never pass it; at a window's
start the count begins again at 0, so a burst at the end of one minute and at the start of the
next may take up to twice the per-minute limit within a few seconds (the price of one counter
per window, which is what makes the limit cheap to share between processes).

Tokens are not known before a response ends: at admission a request reserves an estimate
(input bytes / 4, plus ``max_output_tokens`` when the request gives one); when it ends the
difference to what the provider reported is settled: added to (or refunded from) the window the
reservation was made in while that window lasts, and when the response outlived its window, any
excess is charged to the current window instead (a refund of an expired window changes nothing).

The clock is passed in (``now``, epoch seconds). No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from wsproxy.errors import RateLimited
from wsproxy.policy.keys import Limits

MINUTE = 60
DAY = 86_400
# Counters live this long past their window, so replicas whose clocks differ a little still
# find them (and a late settlement still applies).
EXPIRY_SLACK = 120.0

_WHAT = {
    "rpm": ("requests per minute", MINUTE),
    "tpm": ("tokens per minute", MINUTE),
    "rpd": ("requests per day", DAY),
    "tpd": ("tokens per day", DAY),
}


class Charge(NamedTuple):
    """One counter to raise by ``amount``, refused if it would pass ``limit``."""

    key: str
    amount: int
    limit: int
    expires_at: float
    kind: str  # rpm, tpm, rpd, tpd
    window_end: float


def estimate_tokens(nbytes: int) -> int:
    """A cheap, provider-independent estimate: about four bytes of JSON per token."""
    return math.ceil(max(0, nbytes) / 4)


def _charge(name: str, kind: str, amount: int, limit: int, now: float) -> Charge:
    span = _WHAT[kind][1]
    window = int(now // span)
    end = float((window + 1) * span)
    return Charge(f"{name}:{kind}:{window}", amount, limit, end + EXPIRY_SLACK, kind, end)


def plan(name: str, limits: Limits, now: float, tokens: int, *, requests: int = 1) -> tuple[Charge, ...]:
    """The charges of one request by ``name`` reserving ``tokens``."""
    charges: list[Charge] = []
    for kind, limit, amount in (
        ("rpm", limits.rpm, requests),
        ("rpd", limits.requests_per_day, requests),
        ("tpm", limits.tpm, tokens),
        ("tpd", limits.tokens_per_day, tokens),
    ):
        if limit > 0:
            charges.append(_charge(name, kind, amount, limit, now))
    return tuple(charges)


def retry_after(charge: Charge, now: float) -> int:
    """Whole seconds until the window of ``charge`` ends (at least 1)."""
    return max(1, math.ceil(charge.window_end - now))


def too_large(charges: Sequence[Charge]) -> Charge | None:
    """A charge that no window can ever take (a reservation above the limit itself)."""
    return next((c for c in charges if c.amount > c.limit), None)


def rate_limited(charge: Charge, now: float, *, too_big: bool = False) -> RateLimited:
    what = _WHAT[charge.kind][0]
    if too_big:
        return RateLimited(
            f"Request too large: it needs about {charge.amount} tokens and the limit is {charge.limit} "
            f"{what}. Lower max_output_tokens or the input.",
            headers={"retry-after": str(retry_after(charge, now))},
        )
    wait = retry_after(charge, now)
    return RateLimited(
        f"Rate limit reached: {charge.limit} {what}. Try again in {wait}s.",
        headers={"retry-after": str(wait)},
    )


def settlement(charges: Sequence[Charge], actual: int, now: float) -> list[tuple[str, int, float]]:
    """Counter adjustments ``(key, delta, expires_at)`` once a request that reserved its token
    charges used ``actual`` tokens."""
    out: list[tuple[str, int, float]] = []
    for charge in charges:
        if charge.kind not in ("tpm", "tpd"):
            continue
        delta = actual - charge.amount
        if now < charge.window_end:
            if delta:
                out.append((charge.key, delta, charge.expires_at))
        elif delta > 0:
            name = charge.key.rsplit(":", 2)[0]
            current = _charge(name, charge.kind, delta, charge.limit, now)
            out.append((current.key, delta, current.expires_at))
    return out


def usage_tokens(usage: object) -> tuple[int, int, int, int]:
    """(input, output, cached, reasoning) tokens from a Responses ``usage`` object (zeros for
    anything missing or malformed)."""

    def num(value: object) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    inp = usage.get("input_tokens_details")
    out = usage.get("output_tokens_details")
    cached = num(inp.get("cached_tokens")) if isinstance(inp, dict) else 0
    reasoning = num(out.get("reasoning_tokens")) if isinstance(out, dict) else 0
    return num(usage.get("input_tokens")), num(usage.get("output_tokens")), cached, reasoning
