"""Token-bucket rate limits per principal, with an injected clock (pure, testable).

The table of buckets is bounded: when it overflows, buckets that have refilled completely are
dropped first (forgetting them changes nothing); only if none has, the least recently used goes.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from wsproxy.errors import RateLimited


class RateLimiter:
    def __init__(self, per_minute: int, *, max_principals: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self.max_principals = max_principals
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, principal: str, now: float) -> None:
        """Take one token for ``principal`` at time ``now`` or raise ``RateLimited``."""
        if not self.enabled:
            return
        tokens, last = self._buckets.get(principal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        # (The tolerance: a client that waited exactly the Retry-After it was given must get
        # its token, whatever rounding the float arithmetic did.)
        if tokens < 1.0 - 1e-9:
            wait = (1.0 - tokens) / self.rate
            self._buckets[principal] = (tokens, now)
            raise RateLimited(
                f"Rate limit reached: {int(self.burst)} requests per minute. Try again in {wait:.1f}s.",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )
        self._buckets[principal] = (max(0.0, tokens - 1.0), now)
        self._buckets.move_to_end(principal)
        if len(self._buckets) > self.max_principals:
            self._evict(now)

    def _evict(self, now: float) -> None:
        full = [p for p, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for p in full[: len(self._buckets) - self.max_principals]:
            del self._buckets[p]
        while len(self._buckets) > self.max_principals:
            self._buckets.popitem(last=False)
