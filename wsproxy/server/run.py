"""``serve``: run wsproxy until it is shut down, in this process or as N worker processes."""

from __future__ import annotations

from wsproxy.observability.logs import configure_logging
from wsproxy.server.config import build_config
from wsproxy.server.graceful import GracefulServer
from wsproxy.settings import Settings


def serve(settings: Settings) -> int:
    """Run ``wsproxy serve`` until it is shut down; the process exit status."""
    configure_logging(settings.log_level, settings.log_format, settings.worker_id)
    if settings.workers > 1:
        from wsproxy.server.workers import run_workers

        return run_workers(settings)
    server = GracefulServer(build_config(settings), settings)
    server.run()
    return 0
