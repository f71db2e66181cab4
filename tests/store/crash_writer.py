"""Child process for ``test_sqlite_crash``: put records into a SQLiteStore in a loop, printing each id
to stdout only after its ``put`` returned (the acknowledgement the test relies on), until killed.

Usage: python crash_writer.py DB_PATH TAG MAX_PUTS

Records are a pure function of their id (:func:`expected_record`), so the test can check every
acknowledged record is intact after a SIGKILL. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

# Run as a script: make the repo root importable without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wsproxy.store.base import StoredResponse
from wsproxy.store.sqlite import SQLiteStore

CONCURRENCY = 8


def expected_record(rid: str) -> StoredResponse:
    digest = hashlib.sha256(rid.encode()).hexdigest()
    # Sizes from ~100 B to ~128 KiB, so some transactions span many pages and take a while.
    size = 100 + int(digest[:8], 16) % (128 * 1024)
    text = (digest * (size // len(digest) + 1))[:size]
    seq = int(digest[8:14], 16)
    return StoredResponse(
        id=rid,
        response={"id": rid, "object": "response", "status": "completed", "output_text": text, "seq": seq},
        input_items=[{"id": f"msg_{rid}", "type": "message", "role": "user", "content": f"in {rid} 🙂"}],
        owner="crash",
        created_at=1_700_000_000.0 + seq,
        extra={"digest": digest},
    )


async def main(path: str, tag: str, max_puts: int) -> None:
    # TTL and size bound far away: nothing acknowledged may be purged legitimately.
    store = SQLiteStore(path, ttl_seconds=1e9, max_records=10**9)
    await store.open()

    async def one(i: int) -> None:
        rid = f"{tag}-{i}"
        await store.put(expected_record(rid))
        sys.stdout.write(rid + "\n")
        sys.stdout.flush()

    # Bounded: the test kills us long before this, but a forgotten child must still end.
    for start in range(0, max_puts, CONCURRENCY):
        await asyncio.gather(*(one(i) for i in range(start, min(start + CONCURRENCY, max_puts))))
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
