"""Upstream providers, and the connections they speak over (``pool``, ``h1``, ``h2``).

A provider turns an :class:`~wsproxy.dialects.base.UpstreamCall` into an async iterator of
Responses events. Errors raised before the first event are :class:`~wsproxy.errors.ProxyError`
(the caller may fail over when ``retryable``); once an event was yielded, every failure ends the
stream with a terminal event instead of raising.
"""
