"""A reusable checker for Responses event streams (``responses-streaming.md`` sections 2 and 4).

``check_stream(events)`` takes :class:`~wsproxy.core.events.Event` objects (or their decoded
payloads) and asserts the ordering rules every producer must obey:

- ``sequence_number`` is 0, 1, 2, ... with no gap; the first event is ``response.created``
  (optionally preceded by ``response.queued``); ``response.in_progress`` only right after it;
- exactly one terminal event, and it is the last one;
- items are streamed one after another: ``output_index`` is assigned in order, every item-scoped
  event refers to the item that is open (added, not yet done);
- ``output_item.added`` carries a zero-valued snapshot; content and summary parts are opened and
  closed in pairs with contiguous indexes; every ``*.done`` text equals the concatenated deltas;
- ``output_item.done`` carries exactly the parts that were streamed for it; an ``incomplete`` item
  is the last one;
- the terminal Response has every required key, the matching status, and ``output`` equal to the
  ``output_item.done`` items in order.

It returns a :class:`StreamSummary` for further checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wsproxy.core.events import TERMINAL_TYPES, Event

# Open Responses ``ResponseResource.required`` (spec/openresponses-openapi.json); responses-http.md
# section 4: "emit every key (use null/defaults) so strict clients validate".
REQUIRED_RESPONSE_KEYS = frozenset(
    {
        "background", "completed_at", "created_at", "error", "frequency_penalty", "id",
        "incomplete_details", "instructions", "max_output_tokens", "max_tool_calls", "metadata",
        "model", "object", "output", "parallel_tool_calls", "presence_penalty",
        "previous_response_id", "prompt_cache_key", "reasoning", "safety_identifier",
        "service_tier", "status", "store", "temperature", "text", "tool_choice", "tools",
        "top_logprobs", "top_p", "truncation", "usage",
    }
)  # fmt: skip

SNAPSHOT_TYPES = frozenset(
    {"response.queued", "response.created", "response.in_progress"} | set(TERMINAL_TYPES)
)
_STATUS_OF_TERMINAL = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
}
# part kind -> (delta event, done event, text field of the done event and of the part)
_PART_EVENTS = {
    "output_text": ("response.output_text.delta", "response.output_text.done", "text"),
    "refusal": ("response.refusal.delta", "response.refusal.done", "refusal"),
    "reasoning_text": ("response.reasoning_text.delta", "response.reasoning_text.done", "text"),
}
_DELTA_KIND = {delta: kind for kind, (delta, _, _) in _PART_EVENTS.items()}
_DONE_KIND = {done: kind for kind, (_, done, _) in _PART_EVENTS.items()}
_PART_KINDS_OF_ITEM = {"message": {"output_text", "refusal"}, "reasoning": {"reasoning_text"}}


class StreamViolation(AssertionError):
    pass


@dataclass
class StreamSummary:
    payloads: list[dict[str, Any]]
    response: dict[str, Any]  # the terminal Response
    items: list[dict[str, Any]]  # the output_item.done items, in order
    deltas: dict[str, list[str]] = field(default_factory=dict)  # event type -> every delta, in order

    @property
    def types(self) -> list[str]:
        return [p["type"] for p in self.payloads]


@dataclass
class _Part:
    kind: str  # output_text | refusal | reasoning_text | summary_text
    index: int
    deltas: list[str] = field(default_factory=list)
    done_text: str | None = None


@dataclass
class _Item:
    index: int
    id: str
    type: str
    name: str | None
    content: list[dict[str, Any]] = field(default_factory=list)  # parts closed so far
    summary: list[dict[str, Any]] = field(default_factory=list)
    part: _Part | None = None
    args: list[str] = field(default_factory=list)
    args_done: str | None = None


def _fail(i: int, p: dict[str, Any], why: str) -> StreamViolation:
    return StreamViolation(f"event #{i} {p.get('type')!r}: {why}\n  payload: {p!r}")


def payloads_of(events: Sequence[Event | dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, Event):
            assert b"\n" not in e.data and b"\r" not in e.data, f"{e!r}: data is not a single line"
            p = e.json()
            assert p["type"] == e.type, f"{e!r}: Event.type {e.type!r} != JSON type {p['type']!r}"
            assert p.get("sequence_number") == e.seq, f"{e!r}: Event.seq != JSON sequence_number"
            out.append(p)
        else:
            out.append(e)
    return out


def check_stream(events: Sequence[Event | dict[str, Any]], *, require_closed: bool = True) -> StreamSummary:
    ps = payloads_of(events)
    if not ps:
        raise StreamViolation("empty stream")
    for i, p in enumerate(ps):
        if p.get("sequence_number") != i:
            raise _fail(i, p, f"sequence_number {p.get('sequence_number')!r}, expected {i}")

    first = 1 if ps[0]["type"] == "response.queued" else 0
    if len(ps) <= first or ps[first]["type"] != "response.created":
        raise StreamViolation(f"the stream does not start with response.created: {[p['type'] for p in ps]}")
    created = ps[first]["response"]
    if created.get("status") not in ("in_progress", "queued") or created.get("output") != []:
        raise _fail(first, ps[first], "response.created must be in_progress/queued with output []")
    response_id = created.get("id")

    terminals = [i for i, p in enumerate(ps) if p["type"] in TERMINAL_TYPES]
    if terminals != [len(ps) - 1]:
        raise StreamViolation(f"expected exactly one terminal event, last; found at {terminals} of {len(ps)}")

    items_done: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    deltas: dict[str, list[str]] = {}
    open_item: _Item | None = None
    n_added = 0
    incomplete_item = False
    error_at: int | None = None

    for i, p in enumerate(ps):
        t = p["type"]
        if t in SNAPSHOT_TYPES:
            resp = p.get("response")
            if not isinstance(resp, dict):
                raise _fail(i, p, "no response snapshot")
            missing = REQUIRED_RESPONSE_KEYS - resp.keys()
            if missing:
                raise _fail(i, p, f"response lacks required keys {sorted(missing)}")
            if resp["id"] != response_id or resp["object"] != "response":
                raise _fail(i, p, "response id/object differ from response.created")
            if t == "response.in_progress" and (i != first + 1 or resp["status"] != "in_progress"):
                raise _fail(i, p, "response.in_progress must directly follow response.created")
            if t == "response.queued" and (i != 0 or resp["status"] != "queued"):
                raise _fail(i, p, "response.queued must be first, status queued")
            continue
        if t == "error":
            if error_at is not None:
                raise _fail(i, p, "a second error event")
            if not isinstance(p.get("message"), str) or "code" not in p or "param" not in p:
                raise _fail(i, p, "error event needs code, message, param (flat SSE shape)")
            error_at = i
            continue
        if error_at is not None and not (t.endswith(".done")):
            raise _fail(i, p, "after an error event only closing (*.done) events may precede response.failed")

        if t == "response.output_item.added":
            if open_item is not None:
                raise _fail(i, p, f"item {open_item.id} is still open (items must not interleave)")
            if incomplete_item:
                raise _fail(i, p, "an item after an incomplete item")
            if p.get("output_index") != n_added:
                raise _fail(i, p, f"output_index {p.get('output_index')}, expected {n_added}")
            item = p["item"]
            if item.get("id") in seen_ids or not isinstance(item.get("id"), str):
                raise _fail(i, p, "item id missing or reused")
            kind = item.get("type")
            if kind == "message":
                if (
                    item.get("status") != "in_progress"
                    or item.get("content") != []
                    or item.get("role") != "assistant"
                ):
                    raise _fail(i, p, "message snapshot must be in_progress, role assistant, content []")
            elif kind == "function_call":
                if item.get("status") != "in_progress" or item.get("arguments") != "":
                    raise _fail(i, p, "function_call snapshot must be in_progress with arguments ''")
                if not isinstance(item.get("name"), str) or not isinstance(item.get("call_id"), str):
                    raise _fail(i, p, "function_call snapshot needs name and call_id")
            elif kind == "reasoning":
                if item.get("summary") != [] or item.get("content", []) != []:
                    raise _fail(i, p, "reasoning snapshot must have summary [] and no content")
            else:
                raise _fail(i, p, f"unexpected item type {kind!r}")
            seen_ids.add(item["id"])
            open_item = _Item(n_added, item["id"], kind, item.get("name"))
            n_added += 1
            continue

        # Every other event is scoped to the open item.
        if open_item is None:
            raise _fail(i, p, "no item is open")
        if t != "response.output_item.done" and p.get("item_id") != open_item.id:
            raise _fail(i, p, f"item_id is not the open item {open_item.id}")
        if p.get("output_index") != open_item.index:
            raise _fail(i, p, f"output_index is not the open item's {open_item.index}")
        it = open_item

        if t == "response.content_part.added":
            part = p.get("part") or {}
            kind = part.get("type")
            if it.part is not None or kind not in _PART_KINDS_OF_ITEM.get(it.type, set()):
                raise _fail(i, p, "a part is already open, or this part kind does not belong to the item")
            if p.get("content_index") != len(it.content):
                raise _fail(i, p, f"content_index {p.get('content_index')}, expected {len(it.content)}")
            text_field = _PART_EVENTS[kind][2]
            if part.get(text_field) != "" or (kind == "output_text" and part.get("annotations") != []):
                raise _fail(i, p, "a new part must be empty (and output_text must carry annotations [])")
            it.part = _Part(kind, len(it.content))
        elif t in _DELTA_KIND:
            if it.part is None or it.part.kind != _DELTA_KIND[t] or it.part.done_text is not None:
                raise _fail(i, p, "delta without an open part of its kind")
            if p.get("content_index") != it.part.index or not isinstance(p.get("delta"), str):
                raise _fail(i, p, "wrong content_index or non-string delta")
            if t == "response.output_text.delta" and p.get("logprobs") != []:
                raise _fail(i, p, "output_text.delta must carry logprobs []")
            it.part.deltas.append(p["delta"])
            deltas.setdefault(t, []).append(p["delta"])
        elif t in _DONE_KIND:
            kind = _DONE_KIND[t]
            if it.part is None or it.part.kind != kind or it.part.done_text is not None:
                raise _fail(i, p, "done without an open part of its kind")
            if p.get("content_index") != it.part.index:
                raise _fail(i, p, "wrong content_index")
            text = p.get(_PART_EVENTS[kind][2])
            if text != "".join(it.part.deltas):
                raise _fail(i, p, f"done text {text!r} != concatenated deltas {''.join(it.part.deltas)!r}")
            if t == "response.output_text.done" and p.get("logprobs") != []:
                raise _fail(i, p, "output_text.done must carry logprobs []")
            it.part.done_text = text
        elif t == "response.content_part.done":
            part = p.get("part") or {}
            if it.part is None or it.part.kind == "summary_text" or it.part.done_text is None:
                raise _fail(i, p, "content_part.done without an open content part whose text is done")
            if p.get("content_index") != it.part.index or part.get("type") != it.part.kind:
                raise _fail(i, p, "content_part.done does not match the open part")
            if part.get(_PART_EVENTS[it.part.kind][2]) != it.part.done_text:
                raise _fail(i, p, "content_part.done text differs from the *.done text")
            it.content.append(part)
            it.part = None
        elif t == "response.reasoning_summary_part.added":
            if it.type != "reasoning" or it.part is not None:
                raise _fail(i, p, "summary part on a non-reasoning item or while a part is open")
            if p.get("summary_index") != len(it.summary):
                raise _fail(i, p, f"summary_index {p.get('summary_index')}, expected {len(it.summary)}")
            if p.get("part") != {"type": "summary_text", "text": ""}:
                raise _fail(i, p, "a new summary part must be empty")
            it.part = _Part("summary_text", len(it.summary))
        elif t == "response.reasoning_summary_text.delta":
            if it.part is None or it.part.kind != "summary_text" or it.part.done_text is not None:
                raise _fail(i, p, "summary delta without an open summary part")
            if p.get("summary_index") != it.part.index or not isinstance(p.get("delta"), str):
                raise _fail(i, p, "wrong summary_index or non-string delta")
            it.part.deltas.append(p["delta"])
            deltas.setdefault(t, []).append(p["delta"])
        elif t == "response.reasoning_summary_text.done":
            if it.part is None or it.part.kind != "summary_text" or it.part.done_text is not None:
                raise _fail(i, p, "summary done without an open summary part")
            if p.get("summary_index") != it.part.index or p.get("text") != "".join(it.part.deltas):
                raise _fail(i, p, "summary done: wrong index or text != concatenated deltas")
            it.part.done_text = p["text"]
        elif t == "response.reasoning_summary_part.done":
            part = p.get("part") or {}
            if it.part is None or it.part.kind != "summary_text" or it.part.done_text is None:
                raise _fail(i, p, "summary_part.done before summary_text.done")
            if p.get("summary_index") != it.part.index or part != {
                "type": "summary_text",
                "text": it.part.done_text,
            }:
                raise _fail(i, p, "summary_part.done does not match the streamed summary")
            it.summary.append(part)
            it.part = None
        elif t == "response.function_call_arguments.delta":
            if it.type != "function_call" or it.args_done is not None or not isinstance(p.get("delta"), str):
                raise _fail(i, p, "arguments delta outside an open function_call")
            it.args.append(p["delta"])
            deltas.setdefault(t, []).append(p["delta"])
        elif t == "response.function_call_arguments.done":
            if it.type != "function_call" or it.args_done is not None:
                raise _fail(i, p, "arguments done outside an open function_call, or twice")
            joined = "".join(it.args)
            args = p.get("arguments")
            if not (args == joined or (joined == "" and args == "{}")):
                raise _fail(
                    i, p, f"arguments {args!r} != concatenated deltas {joined!r} (or '{{}}' when empty)"
                )
            if p.get("name") != it.name:
                raise _fail(i, p, f"arguments.done must carry the function name {it.name!r}")
            it.args_done = args
        elif t == "response.output_item.done":
            item = p.get("item") or {}
            if item.get("id") != it.id or item.get("type") != it.type:
                raise _fail(i, p, "output_item.done is not the open item")
            if it.part is not None:
                raise _fail(i, p, "output_item.done while a part is still open")
            if it.type == "message":
                if item.get("content") != it.content:
                    raise _fail(
                        i, p, f"message content {item.get('content')!r} != streamed parts {it.content!r}"
                    )
            elif it.type == "function_call":
                if it.args_done is None or item.get("arguments") != it.args_done:
                    raise _fail(i, p, "function_call done without arguments.done, or with other arguments")
            elif it.type == "reasoning":
                if item.get("summary") != it.summary or item.get("content", []) != it.content:
                    raise _fail(i, p, "reasoning summary/content differ from the streamed parts")
            if it.type != "reasoning":
                if item.get("status") not in ("completed", "incomplete"):
                    raise _fail(i, p, "a done item must be completed or incomplete")
                if item["status"] == "incomplete":
                    incomplete_item = True
            items_done.append(item)
            open_item = None
        elif t in TERMINAL_TYPES:
            pass  # handled above; unreachable
        else:
            raise _fail(i, p, "unexpected event type")

    last = ps[-1]
    resp = last["response"]
    status = _STATUS_OF_TERMINAL[last["type"]]
    if resp["status"] != status:
        raise _fail(len(ps) - 1, last, f"terminal status {resp['status']!r}, expected {status!r}")
    if require_closed and open_item is not None:
        raise _fail(len(ps) - 1, last, f"item {open_item.id} left open")
    if resp["output"] != items_done:
        raise _fail(len(ps) - 1, last, "terminal output != the output_item.done items in order")
    if status == "completed":
        if resp["error"] is not None or resp["incomplete_details"] is not None or incomplete_item:
            raise _fail(len(ps) - 1, last, "a completed response has no error and no incomplete item")
        if not isinstance(resp["usage"], dict):
            raise _fail(len(ps) - 1, last, "completed response without usage")
    elif status == "incomplete":
        reason = (resp["incomplete_details"] or {}).get("reason")
        if not isinstance(reason, str) or not reason or not isinstance(resp["usage"], dict):
            raise _fail(len(ps) - 1, last, "incomplete response needs incomplete_details.reason and usage")
    else:
        err = resp["error"]
        if (
            not isinstance(err, dict)
            or not isinstance(err.get("code"), str)
            or not isinstance(err.get("message"), str)
        ):
            raise _fail(len(ps) - 1, last, "failed response needs error {code, message}")
    if error_at is not None and status != "failed":
        raise StreamViolation("an error event must be followed by response.failed")
    return StreamSummary(ps, resp, items_done, deltas)
