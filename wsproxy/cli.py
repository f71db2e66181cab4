"""``wsproxy serve``: argv -> Settings -> uvicorn (uvloop, httptools).

SIGTERM/SIGINT start a graceful shutdown: readiness turns false, new requests are refused, and
in-flight responses get ``limits.shutdown_grace`` seconds to finish; WebSocket sessions then close
with 1001. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn

from wsproxy import __version__
from wsproxy.settings import Settings, SettingsError, load_settings

log = logging.getLogger("wsproxy")


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a drain phase before it stops accepting and closes connections."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.should_exit:
            self.force_exit = True
            self.should_exit = True
            return
        app = self.config.loaded_app
        runtime = getattr(getattr(getattr(app, "app", app), "state", None), "runtime", None)
        if runtime is None:
            super().handle_exit(sig, frame)
            return
        self._draining = asyncio.get_running_loop().create_task(self._drain(runtime))

    async def _drain(self, runtime: object) -> None:
        from wsproxy.runtime import Runtime

        assert isinstance(runtime, Runtime)
        grace = self.settings.limits.shutdown_grace
        log.info("shutdown: draining %d in-flight responses (grace %.0fs)", runtime.active_responses, grace)
        runtime.ready = False
        runtime.closing.set()
        try:
            async with asyncio.timeout(grace + 1.0):
                await runtime.drained.wait()
        except TimeoutError:
            log.warning("shutdown: grace period over with %d responses running", runtime.active_responses)
        self.should_exit = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsproxy", description="A proxy for the OpenAI Responses API.")
    parser.add_argument("--version", action="version", version=f"wsproxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080)")
    serve.add_argument("--config", help="TOML settings file (or WSPROXY_CONFIG)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    return parser


def serve(settings: Settings) -> None:
    from wsproxy.asgi.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    limits = settings.limits
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=limits.max_ws_message_bytes,
        ws_ping_interval=limits.ws_ping_interval,
        ws_ping_timeout=limits.ws_ping_timeout,
        ws_per_message_deflate=True,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(limits.shutdown_grace) + 5,
        h11_max_incomplete_event_size=64 * 1024,
    )
    server = GracefulServer(config, settings)
    server.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    overrides = {
        k: v for k, v in {"host": args.host, "port": args.port, "log_level": args.log_level}.items() if v is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except (SettingsError, OSError) as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
