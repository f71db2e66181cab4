"""Rebuild the event stream of a finished response from its stored Response object.

Used to stream a stored response that has no event log (``GET /v1/responses/{id}?stream=true``):
the same items in the same order, each text part as one delta, ending with the stored terminal
status. Sequence numbers are those of the rebuilt stream, so ``starting_after`` is consistent
within it.
"""

from __future__ import annotations

from typing import Any

import orjson

from wsproxy.core.events import Event

_TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete"}


def replay_events(response: dict[str, Any]) -> list[Event]:
    events: list[Event] = []

    def emit(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(Event(kind, orjson.dumps(payload), payload["sequence_number"]))

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    opening.update(error=None, incomplete_details=None, completed_at=None)
    emit("response.created", response=opening)
    emit("response.in_progress", response=opening)
    for index, item in enumerate(response.get("output") or []):
        item_id = item.get("id")
        kind = item.get("type")
        if kind == "message":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            for ci, part in enumerate(item.get("content") or []):
                common = {"item_id": item_id, "output_index": index, "content_index": ci}
                if part.get("type") == "refusal":
                    emit("response.content_part.added", **common, part={"type": "refusal", "refusal": ""})
                    emit("response.refusal.delta", **common, delta=part.get("refusal", ""))
                    emit("response.refusal.done", **common, refusal=part.get("refusal", ""))
                else:
                    text = part.get("text", "")
                    emit(
                        "response.content_part.added",
                        **common,
                        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                    )
                    emit("response.output_text.delta", **common, delta=text, logprobs=[])
                    emit("response.output_text.done", **common, text=text, logprobs=[])
                emit("response.content_part.done", **common, part=part)
        elif kind == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            args = item.get("arguments", "")
            emit("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=args)
            emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=args,
                name=item.get("name"),
            )
        elif kind == "reasoning":
            opened = {**item, "summary": []}
            if "content" in item:
                opened["content"] = []
            emit("response.output_item.added", output_index=index, item=opened)
            for si, part in enumerate(item.get("summary") or []):
                common = {"item_id": item_id, "output_index": index, "summary_index": si}
                text = part.get("text", "")
                emit(
                    "response.reasoning_summary_part.added",
                    **common,
                    part={"type": "summary_text", "text": ""},
                )
                emit("response.reasoning_summary_text.delta", **common, delta=text)
                emit("response.reasoning_summary_text.done", **common, text=text)
                emit("response.reasoning_summary_part.done", **common, part=part)
            for ci, part in enumerate(item.get("content") or []):
                common = {"item_id": item_id, "output_index": index, "content_index": ci}
                text = part.get("text", "")
                emit("response.content_part.added", **common, part={"type": "reasoning_text", "text": ""})
                emit("response.reasoning_text.delta", **common, delta=text)
                emit("response.reasoning_text.done", **common, text=text)
                emit("response.content_part.done", **common, part=part)
        else:
            emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    status = response.get("status")
    emit(_TERMINAL.get(str(status), "response.failed"), response=response)
    return events
