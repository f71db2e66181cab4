"""``wsproxy serve``: argv -> Settings -> the server (``wsproxy.server``); ``wsproxy keys hash``:
the digest line of a ``[keys.NAME]`` section. Nothing else."""

from __future__ import annotations

import argparse
import signal
import sys

from wsproxy import __version__
from wsproxy.policy.auth import key_digest
from wsproxy.server.run import serve
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
    keys = sub.add_parser("keys", help="API key helpers")
    keys_sub = keys.add_subparsers(dest="keys_command")
    hash_cmd = keys_sub.add_parser(
        "hash", help="print the sha256 line of a [keys.NAME] section for KEY ('-': read it from stdin)"
    )
    hash_cmd.add_argument("key", metavar="KEY")
    return parser


def keys_hash(key: str) -> int:
    """Print ``sha256 = "<hex>"``; the key itself is never printed."""
    if key == "-":
        # From stdin, so the key does not land in the shell history: the first line, without
        # its line break.
        key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("wsproxy: empty key", file=sys.stderr)
        return 2
    print(f'sha256 = "{key_digest(key)}"')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keys" and args.keys_command == "hash":
        return keys_hash(args.key)
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
