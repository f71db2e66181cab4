"""``wsproxy serve``: argv -> Settings -> the server (``wsproxy.server``). Nothing else."""

from __future__ import annotations

import argparse
import signal
import sys

from wsproxy import __version__
from wsproxy.server.config import serve
from wsproxy.settings import SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsproxy", description="A proxy for the OpenAI Responses API.")
    parser.add_argument("--version", action="version", version=f"wsproxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080)")
    serve.add_argument("--config", help="TOML settings file (or WSPROXY_CONFIG)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--workers", type=int, help="processes serving the port (default 1, or WSPROXY_WORKERS)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
            "workers": args.workers,
        }.items()
        if v is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except (SettingsError, OSError) as exc:
        print(f"wsproxy: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
