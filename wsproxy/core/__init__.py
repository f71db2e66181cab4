"""Pure protocol logic: events, SSE codec, WebSocket-mode session rules, ids.

Nothing in this package performs I/O, awaits, reads the clock or the environment.
"""
