"""Identifier generation for responses and output items.

Ids are 24 random bytes in hex after the OpenAI-style prefix: unguessable, so that a response id
is a capability even before auth exists. ``IdFactory`` is injectable so that tests and golden
transcripts can use deterministic ids.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable

IdFactory = Callable[[str], str]


def random_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def counter_ids(start: int = 1) -> IdFactory:
    """Deterministic ids (``msg_0001``...) for tests and recorded transcripts."""
    counter = itertools.count(start)

    def make(prefix: str) -> str:
        return f"{prefix}_{next(counter):04d}"

    return make
