"""The built-in local model: a deterministic streaming upstream, used when no provider is set.

It is a provider like any other (same interface, same event builder), so everything a client can
do against a real model can be tried with no key and no network:

- it answers in words streamed one token at a time, ``token_delay`` seconds apart (after
  ``prefill_delay``), so streaming is visible;
- ``instructions`` are acknowledged in the answer; ``max_output_tokens`` cuts the answer and
  ends the response ``incomplete``; usage counts whitespace-separated tokens;
- with function tools, when the last user message names a tool (or ``tool_choice`` requires
  one), it emits a real ``function_call`` item with arguments built from the tool's JSON schema;
  after a ``function_call_output`` it reports what the tool returned.

``plan_reply`` is pure; ``LocalProvider`` only adds the pacing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from wsproxy.core.events import Event, ResponseBuilder, usage_object
from wsproxy.core.ids import IdFactory, random_id
from wsproxy.dialects.base import UpstreamCall


@dataclass(slots=True)
class ToolCallPlan:
    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ReplyPlan:
    tokens: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallPlan] = field(default_factory=list)
    input_tokens: int = 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _count_tokens(items: list[dict[str, Any]], instructions: Any) -> int:
    total = len(_text_of(instructions).split()) if isinstance(instructions, str) else 0
    for item in items:
        if item.get("type", "message") == "message":
            total += len(_text_of(item.get("content")).split())
        elif item.get("type") == "function_call_output":
            total += len(str(item.get("output", "")).split())
        elif item.get("type") == "function_call":
            total += len(str(item.get("arguments", "")).split())
    return total


def _function_tools(tools: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and isinstance(tool.get("name"), str):
            out.append(tool)
        elif tool.get("type") == "namespace":
            out.extend(_function_tools(tool.get("tools")))
    return out


def _example_value(schema: Any, text: str) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(schema, dict) and schema.get("enum"):
        return schema["enum"][0]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return _example_arguments(schema, text)
    return text


def _example_arguments(schema: Any, text: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties") or {}
    return {name: _example_value(sub, text) for name, sub in props.items()}


def _choose_tool(tools: list[dict[str, Any]], tool_choice: Any, user_text: str) -> dict[str, Any] | None:
    if not tools or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        return next((t for t in tools if t["name"] == tool_choice.get("name")), None)
    lowered = user_text.lower()
    named = next((t for t in tools if t["name"].lower() in lowered), None)
    if named is not None:
        return named
    if tool_choice == "required" or "use a tool" in lowered or "call a tool" in lowered:
        return tools[0]
    return None


def plan_reply(call: UpstreamCall, ids: IdFactory = random_id) -> ReplyPlan:
    """What the local model answers to ``call``: deterministic for a given input."""
    items = call.input
    instructions = call.body.get("instructions")
    plan = ReplyPlan(input_tokens=_count_tokens(items, instructions))
    last = items[-1] if items else {}
    user_text = ""
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            user_text = _text_of(item.get("content")).strip()
            break

    words: list[str] = []
    if isinstance(instructions, str) and instructions.strip():
        words += ["(Instructions:", *instructions.strip().split()[:12]]
        words[-1] += ")"
    if last.get("type") == "function_call_output":
        output = str(last.get("output", ""))
        words += ["The", "tool", "returned:", *(output.split()[:40] or ['""'])]
    else:
        tool = _choose_tool(_function_tools(call.body.get("tools")), call.body.get("tool_choice"), user_text)
        if tool is not None:
            args = _example_arguments(tool.get("parameters"), user_text or "example")
            plan.tool_calls.append(ToolCallPlan(ids("call"), tool["name"], orjson.dumps(args).decode()))
            plan.tokens = []
            return plan
        said = user_text.split()[:40] if user_text else ["nothing"]
        words += ["Hello!", "This", "is", "the", "wsproxy", "local", "model.", "You", "said:", *said]
    plan.tokens = _until_stop([w if i == 0 else " " + w for i, w in enumerate(words)], call.body.get("stop"))
    return plan


def _until_stop(tokens: list[str], stop: Any) -> list[str]:
    """The tokens up to (not including) the first stop sequence, as a model stops."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    text = "".join(tokens)
    cuts = [i for i in (text.find(s) for s in stops if s) if i != -1]
    if not cuts:
        return tokens
    end = min(cuts)
    out: list[str] = []
    size = 0
    for token in tokens:
        if size + len(token) > end:
            if end > size:
                out.append(token[: end - size])
            break
        out.append(token)
        size += len(token)
    return out


class LocalProvider:
    kind = "local"
    # seed: the answer is deterministic anyway; stop: the answer ends before a stop sequence.
    supported_params = frozenset({"seed", "stop"})

    def __init__(self, name: str = "local", *, token_delay: float = 0.02, prefill_delay: float = 0.0) -> None:
        self.name = name
        self.token_delay = token_delay
        self.prefill_delay = prefill_delay

    async def aclose(self) -> None:
        return None

    async def stream(
        self, call: UpstreamCall, response_id: str, created_at: int
    ) -> AsyncGenerator[Event, None]:
        builder = ResponseBuilder(response_id, call.body.get("model", call.model), created_at, call.body)
        plan = plan_reply(call)
        for event in builder.start():
            yield event
        if self.prefill_delay:
            await asyncio.sleep(self.prefill_delay)
        limit = call.body.get("max_output_tokens")
        emitted = 0
        for token in plan.tokens:
            if limit is not None and emitted >= limit:
                usage = usage_object(plan.input_tokens, emitted)
                for event in builder.incomplete("max_output_tokens", usage):
                    yield event
                return
            for event in builder.text_delta(token):
                yield event
            emitted += 1
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
        for tool_call in plan.tool_calls:
            for event in builder.function_call(tool_call.call_id, tool_call.name):
                yield event
            # Arguments stream in pieces, as a real model's do.
            args = tool_call.arguments
            step = max(1, len(args) // 3)
            for i in range(0, len(args), step):
                for event in builder.arguments_delta(args[i : i + step]):
                    yield event
                emitted += 1
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
        for event in builder.complete(usage_object(plan.input_tokens, emitted), int(time.time())):
            yield event
