"""Fuzzing the request parser: whatever a client sends, ``parse_create`` returns a valid
``CreateRequest`` or raises a ``ProxyError`` (a 4xx the edge renders); never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import CORPUS
from tests.fuzz.strategies import create_bodies, json_values
from wsproxy.core.request import HTTP_ONLY, STREAM_ID_RE, WS_ONLY, CreateRequest, loads_object, parse_create
from wsproxy.errors import ProxyError


def check(obj: Any, websocket: bool) -> CreateRequest | ProxyError:
    try:
        request = parse_create(obj, websocket=websocket)
    except ProxyError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message and isinstance(exc.message, str)
        return exc
    # What a valid request guarantees to the rest of the proxy.
    assert isinstance(request.model, str) and request.model
    assert isinstance(request.input, list) and all(isinstance(i, dict) for i in request.input)
    assert not (set(request.body) & (HTTP_ONLY | WS_ONLY)), "transport fields never travel upstream"
    assert isinstance(request.store, bool) and isinstance(request.generate, bool)
    if request.stream_id is not None:
        assert websocket and STREAM_ID_RE.match(request.stream_id)
    if not websocket:
        assert request.stream_id is None
    if websocket:
        assert request.background is False
    return request


@settings(max_examples=600, deadline=None)
@given(body=create_bodies(), websocket=st.booleans())
def test_parse_create_raises_only_proxy_errors(body: dict[str, Any], websocket: bool) -> None:
    check(body, websocket)


@settings(max_examples=200, deadline=None)
@given(value=json_values, websocket=st.booleans())
def test_parse_create_on_any_json_object(value: Any, websocket: bool) -> None:
    if isinstance(value, dict):
        check(value, websocket)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_loads_object_raises_only_proxy_errors(data: bytes) -> None:
    try:
        value = loads_object(data)
    except ProxyError as exc:
        assert exc.status == 400 and exc.code == "invalid_json"
        return
    assert isinstance(value, dict)


@pytest.mark.parametrize("path", sorted((CORPUS / "frames").iterdir()), ids=lambda p: p.name)
def test_corpus(path: Any) -> None:
    """Each nasty input of the corpus, through the parser as both transports see it."""
    try:
        obj = loads_object(path.read_bytes())
    except ProxyError as exc:
        assert exc.code == "invalid_json"
        return
    check(obj, websocket=True)
    http = {k: v for k, v in obj.items() if k != "type"}
    check(http, websocket=False)
