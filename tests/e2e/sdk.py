"""The official SDK as the test client: every client made here is closed after its test."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

OPEN: list[OpenAI] = []

# One strict function tool, for the tool-call tests of every provider.
WEATHER_TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]


def client(proxy: Any, key: str = "sk-test") -> OpenAI:
    c = OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)
    OPEN.append(c)
    return c


def close_all() -> None:
    while OPEN:
        OPEN.pop().close()
