"""Usage rows and their query: UTC dates, the ``start_date``/``end_date`` filters (pure).

Usage is kept per key, model and UTC day: requests, input, output, cached and reasoning tokens.
``GET /v1/usage`` validates its filters here; dates are ``YYYY-MM-DD``, the range is inclusive
and at most :data:`MAX_RANGE_DAYS` long. No clock: "today" is passed in.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from wsproxy.errors import InvalidRequest

MAX_RANGE_DAYS = 400
DEFAULT_RANGE_DAYS = 31
# Model names come from clients: what is kept of one is bounded and free of separators.
MAX_MODEL_CHARS = 200

COUNTERS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What one response adds to the row of (``date``, ``key``, ``model``)."""

    date: str
    key: str
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def counts(self) -> tuple[int, int, int, int, int]:
        return (
            self.requests, self.input_tokens, self.output_tokens, self.cached_tokens, self.reasoning_tokens
        )  # fmt: skip


def utc_date(epoch_seconds: float) -> str:
    return _dt.datetime.fromtimestamp(epoch_seconds, _dt.UTC).date().isoformat()


def clean_model(model: str) -> str:
    """A model name as a usage row keeps it: control characters dropped, length bounded."""
    return "".join(ch for ch in model if ch.isprintable())[:MAX_MODEL_CHARS] or "unknown"


def _parse(value: str, param: str) -> _dt.date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{param}': expected a date as YYYY-MM-DD.", param=param, code="invalid_value"
        ) from None


def date_range(start: str | None, end: str | None, today: str) -> tuple[str, str]:
    """The validated inclusive range; defaults: the last :data:`DEFAULT_RANGE_DAYS` days to today."""
    end_date = _parse(end, "end_date") if end is not None else _dt.date.fromisoformat(today)
    start_date = (
        _parse(start, "start_date")
        if start is not None
        else end_date - _dt.timedelta(days=DEFAULT_RANGE_DAYS - 1)
    )
    if start_date > end_date:
        raise InvalidRequest("'start_date' is after 'end_date'.", param="start_date", code="invalid_value")
    if (end_date - start_date).days >= MAX_RANGE_DAYS:
        raise InvalidRequest(
            f"The date range is longer than {MAX_RANGE_DAYS} days.", param="start_date", code="invalid_value"
        )
    return start_date.isoformat(), end_date.isoformat()


def dates_between(start: str, end: str) -> list[str]:
    """Every date of the inclusive range (bounded by :func:`date_range`)."""
    first, last = _dt.date.fromisoformat(start), _dt.date.fromisoformat(end)
    days = min((last - first).days, MAX_RANGE_DAYS)
    return [(first + _dt.timedelta(days=i)).isoformat() for i in range(days + 1)]
