"""Logging set-up: text for people, JSON lines for machines (``log_format = "json"``).

Structured records carry their fields in ``extra={"fields": {...}}``: the text formatter appends
them as ``key=value``, the JSON formatter merges them into the object. What goes into ``fields``
is decided at the call sites (access log, session log, response log), which log sizes, times,
names and ids, never a key, a secret or a request or response body.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

ACCESS = logging.getLogger("wsproxy.access")


class TextFormatter(logging.Formatter):
    def __init__(self, worker_id: int = 0) -> None:
        # With --workers N each line says which worker (and process) wrote it.
        where = f" [w{worker_id} %(process)d]" if worker_id else ""
        super().__init__(f"%(asctime)s %(levelname)s{where} %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return text


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return orjson.dumps(text).decode() if (" " in text or not text) else text


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_id: int = 0) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker_id:
            obj["worker"] = self.worker_id
            obj["pid"] = record.process
        fields = getattr(record, "fields", None)
        if fields:
            obj.update(fields)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def configure_logging(level: str, log_format: str, worker_id: int = 0) -> None:
    """The root handler for ``wsproxy serve`` (uvicorn's own loggers propagate to it)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(worker_id) if log_format == "json" else TextFormatter(worker_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def log_fields(logger: logging.Logger, message: str, **fields: Any) -> None:
    """One structured line at INFO (skipped cheaply when INFO is off)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(message, extra={"fields": fields})
