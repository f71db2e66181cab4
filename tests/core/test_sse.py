"""SSEDecoder / encode_event: WHATWG event-stream rules under arbitrary chunkings."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.core.sse import DONE, KEEPALIVE, SSEDecoder, SSEError, SSEMessage, encode_event

SETTINGS = settings(max_examples=150, deadline=None)


def decode(chunks: list[bytes], max_line: int = 1 << 20) -> list[tuple[str | None, bytes]]:
    dec = SSEDecoder(max_line=max_line)
    out: list[SSEMessage] = []
    for chunk in chunks:
        out += dec.feed(chunk)
    out += dec.flush()
    return [(m.event, m.data) for m in out]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


# -- line endings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending(eol: bytes) -> None:
    raw = b"event: a" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + eol
    expected = [("a", b"1"), (None, b"2")]
    assert decode([raw]) == expected
    assert decode(bytewise(raw)) == expected


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    # The LF completing the CRLF must not count as a second (blank) line ...
    assert dec.feed(b"\ndata: b\r") == []
    # ... and the blank line that really ends the event dispatches both data lines.
    assert dec.feed(b"\n\r\n") == [SSEMessage(None, b"a\nb")]
    assert dec.flush() == []


def test_cr_at_chunk_end_then_cr_is_two_line_ends() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\r") == [SSEMessage(None, b"a")]


def test_cr_at_chunk_end_then_empty_chunk_then_lf() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"") == []
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\n") == [SSEMessage(None, b"a")]


def test_mixed_line_endings_in_one_stream() -> None:
    raw = b"data: 1\r\n\ndata: 2\r\rdata: 3\n\r\n"
    assert decode([raw]) == [(None, b"1"), (None, b"2"), (None, b"3")]
    assert decode(bytewise(raw)) == [(None, b"1"), (None, b"2"), (None, b"3")]


# -- fields -------------------------------------------------------------------------------------------


def test_comments_are_dropped_anywhere() -> None:
    raw = b": ping\n\n:\ndata: x\n: between fields\nevent: e\n\n" + KEEPALIVE
    assert decode([raw]) == [("e", b"x")]


def test_multi_line_data_joined_with_newline() -> None:
    assert decode([b"data: a\ndata: b\ndata:\ndata: c\n\n"]) == [(None, b"a\nb\n\nc")]


def test_data_with_and_without_the_space() -> None:
    assert decode([b"data:x\n\n"]) == [(None, b"x")]
    assert decode([b"data: x\n\n"]) == [(None, b"x")]
    # Only one leading space is removed.
    assert decode([b"data:  x\n\n"]) == [(None, b" x")]
    # A colon later in the value is data.
    assert decode([b'data: {"a":"b:c"}\n\n']) == [(None, b'{"a":"b:c"}')]


def test_field_without_colon_and_empty_data() -> None:
    assert decode([b"data\n\n"]) == [(None, b"")]
    assert decode([b"data:\n\n"]) == [(None, b"")]


def test_event_field_applies_to_one_message_only() -> None:
    raw = b"event: first\ndata: 1\n\ndata: 2\n\nevent:third\ndata: 3\n\n"
    assert decode([raw]) == [("first", b"1"), (None, b"2"), ("third", b"3")]


def test_event_without_data_is_not_dispatched_and_does_not_leak() -> None:
    assert decode([b"event: lonely\n\ndata: x\n\n"]) == [(None, b"x")]


def test_unknown_fields_and_id_retry_are_ignored() -> None:
    assert decode([b"id: 7\nretry: 100\nfoo: bar\ndata: x\n\n"]) == [(None, b"x")]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert decode([b"\n\n\r\n\r\r"]) == []


def test_data_is_not_decoded() -> None:
    payload = "é ✓".encode() + b"\xff"
    assert decode([b"data: " + payload + b"\n\n"]) == [(None, payload)]


# -- end of stream ------------------------------------------------------------------------------------


def test_flush_dispatches_a_final_message_without_blank_line() -> None:
    assert decode([b"data: last"]) == [(None, b"last")]
    assert decode([b"event: e\ndata: last\n"]) == [("e", b"last")]
    assert decode([b"data: last\r"]) == [(None, b"last")]


def test_flush_on_clean_end_is_empty_and_idempotent() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\n") == [SSEMessage(None, b"a")]
    assert dec.flush() == []
    assert dec.flush() == []


def test_flush_without_data_dispatches_nothing() -> None:
    assert decode([b"event: e\n"]) == []
    assert decode([b": comment"]) == []


# -- bound ------------------------------------------------------------------------------------------


def test_partial_line_over_max_line_raises() -> None:
    dec = SSEDecoder(max_line=16)
    assert dec.feed(b"data: 0123456789") == []  # exactly 16 bytes pending: allowed
    with pytest.raises(SSEError):
        dec.feed(b"X")


def test_long_line_fed_in_small_chunks_raises() -> None:
    dec = SSEDecoder(max_line=64)
    with pytest.raises(SSEError):
        for _ in range(100):
            dec.feed(b"data: xxxxxxxxxx")


def test_complete_lines_under_the_bound_never_raise() -> None:
    dec = SSEDecoder(max_line=16)
    out = []
    for _ in range(100):
        out += dec.feed(b"data: 0123456789\n\n")
    assert len(out) == 100


def test_max_line_bound_does_not_depend_on_chunking() -> None:
    """The docstring promises: a line longer than ``max_line`` raises SSEError. The same bytes must
    not be accepted or refused depending on how the network happened to chunk them."""
    raw = b"data: " + b"x" * 40 + b"\n\n"
    with pytest.raises(SSEError):
        decode([raw[:20], raw[20:]], max_line=16)  # chunked: raises
    with pytest.raises(SSEError):
        decode([raw], max_line=16)  # one chunk: must raise too


# -- encoder ------------------------------------------------------------------------------------------


def test_encode_event_wire_format() -> None:
    data = b'{"type":"response.created","sequence_number":0}'
    assert encode_event("response.created", data) == b"event: response.created\ndata: " + data + b"\n\n"
    assert decode([encode_event("response.created", data)]) == [("response.created", data)]


def test_done_and_keepalive_constants() -> None:
    assert decode([DONE]) == [(None, b"[DONE]")]
    assert decode([KEEPALIVE]) == []


# -- properties ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
event_types = st.from_regex(r"\A[a-z_]{1,12}(\.[a-z_]{1,12}){0,3}\Z")
events_strategy = st.lists(st.tuples(event_types, json_values), max_size=12)


@SETTINGS
@given(
    events=events_strategy,
    cuts=st.lists(st.integers(0, 4000), max_size=30),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    comments=st.booleans(),
)
def test_encoded_events_decode_to_the_originals_under_any_chunking(
    events: list[tuple[str, object]], cuts: list[int], eol: bytes, comments: bool
) -> None:
    originals = [(t, orjson.dumps({"type": t, "value": v})) for t, v in events]
    wire = b"".join((KEEPALIVE if comments else b"") + encode_event(t, d) for t, d in originals)
    wire = wire.replace(b"\n", eol)  # JSON data never holds a raw CR or LF
    assert decode(split_at(wire, cuts)) == originals


sse_alphabet = st.sampled_from(
    [b"data", b"event", b"id", b":", b" ", b"\r", b"\n", b"\r\n", b"x", b"y", b"\xc3\xa9"]
)


@SETTINGS
@given(pieces=st.lists(sse_alphabet, max_size=60), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_decoding_does_not_depend_on_chunking(pieces: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(pieces)
    whole = decode([raw])
    assert decode(split_at(raw, cuts)) == whole
    assert decode(bytewise(raw)) == whole


# -- LF-only fast path against the general decoder ----------------------------------------------------


def run(feed_name: str, chunks: list[bytes], max_line: int) -> list[list[SSEMessage]] | type[SSEError]:
    """Decode with one entry point: ``feed`` (fast path when it may) or ``_feed_any`` (general
    decoder only). The messages of each call are kept apart, so a message dispatched one chunk
    early shows; a refused line yields ``SSEError`` so both outcomes can be compared."""
    dec = SSEDecoder(max_line=max_line)
    feed = getattr(dec, feed_name)
    try:
        return [feed(chunk) for chunk in chunks] + [dec.flush()]
    except SSEError:
        return SSEError


def split_sizes(data: bytes, sizes: list[int]) -> list[bytes]:
    """Chunks of the given sizes in turn (cycled), so short chunks land anywhere in the stream."""
    chunks, start, i = [], 0, 0
    while start < len(data) and sizes:
        chunks.append(data[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    chunks.append(data[start:])
    return chunks


chunk_sizes = st.lists(st.integers(1, 24), min_size=1, max_size=12)

line_pieces = st.sampled_from(
    [b"data", b"data:", b"data: ", b"event:", b"event: ", b"id: 1", b"retry", b":", b" ", b"x", b"yz",
     b"\xc3\xa9", b"e"]
)  # fmt: skip
# LF-only streams as lines (blank ones included), so that line lengths sit around the bounds drawn.
lf_streams = st.tuples(
    st.lists(st.lists(line_pieces, max_size=6).map(b"".join), max_size=24), st.booleans()
).map(lambda t: b"\n".join(t[0]) + (b"\n" if t[1] else b""))


@settings(max_examples=300, deadline=None)
@given(raw=lf_streams, sizes=chunk_sizes, max_line=st.integers(1, 30) | st.just(1 << 20))
def test_fast_path_matches_general_decoder_on_lf_input(raw: bytes, sizes: list[int], max_line: int) -> None:
    """Same messages, and the same lines refused by ``max_line``, whatever the chunking."""
    assert b"\r" not in raw  # every feed() below takes the fast path
    chunks = split_sizes(raw, sizes)
    general = run("_feed_any", chunks, max_line)
    assert run("feed", chunks, max_line) == general
    assert run("_feed_lf", chunks, max_line) == general
    assert run("feed", bytewise(raw), max_line) == run("_feed_any", bytewise(raw), max_line)


# Chunks of a few pieces each: many hold no CR (fast path), some end in a CR (pending).
mixed_pieces = st.sampled_from([b"data: a", b"data", b"event: e", b":", b"x", b"\r", b"\n", b"\r\n"])
mixed_chunks = st.lists(st.lists(mixed_pieces, max_size=4).map(b"".join), max_size=30)


@settings(max_examples=300, deadline=None)
@given(chunks=mixed_chunks, max_line=st.sampled_from([4, 8, 16, 1 << 20]))
def test_cr_input_falls_back_to_the_general_decoder(chunks: list[bytes], max_line: int) -> None:
    """Chunks with and without CR interleave: ``feed`` switches paths chunk by chunk (and stays on
    the general one while a CR at a chunk end waits for a possible LF) without changing the result."""
    assert run("feed", chunks, max_line) == run("_feed_any", chunks, max_line)


def test_pending_cr_routes_an_lf_only_chunk_to_the_general_decoder() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    # LF-only chunk, but it completes the CRLF above: a second line end here would be a blank line
    # and dispatch early.
    assert dec.feed(b"\ndata: b\n") == []
    assert dec.feed(b"\n") == [SSEMessage(None, b"a\nb")]


def test_fast_path_bound_counts_the_pending_partial_line() -> None:
    dec = SSEDecoder(max_line=16)
    assert dec.feed(b"data: 0123456") == []  # 13 bytes pending
    with pytest.raises(SSEError):
        dec.feed(b"789ABCDEF\n\n")  # completes a 22-byte line with a short chunk


def test_fast_path_line_of_exactly_max_line_is_accepted() -> None:
    dec = SSEDecoder(max_line=16)
    assert dec.feed(b"data: 01234") == []
    assert dec.feed(b"56789\n\n") == [SSEMessage(None, b"0123456789")]
