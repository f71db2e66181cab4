"""wsproxy: a proxy for the OpenAI Responses API, WebSocket mode first."""

__version__ = "0.1.0"
