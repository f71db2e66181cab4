"""What the load generator talks to, and the processes behind it.

A :class:`Target` is one way of reaching the fake upstream:

    direct        load generator --SSE--> fake upstream (the baseline every "added" figure uses)
    nginx         load generator --SSE--> nginx (proxy_buffering off) --HTTP/1.1--> fake upstream
    wsproxy       load generator --SSE or WebSocket mode--> wsproxy --HTTP/1.1 or h2c--> fake upstream
                  (passthrough: OpenAI Responses upstream; translated: Chat Completions upstream)

:class:`Lab` starts the three servers as child processes (the proxy under test and nginx pinned to
the proxy core, the upstream to the harness core), writes their configs into a temp dir, and stops
them by PID. wsproxy runs as ``python -m wsproxy serve`` (uvloop + httptools) with the memory store
and warning-level logs; its upstream pools are raised to 1024 connections so that HTTP/1.1
upstreams are not capped at the default 100 concurrent streams.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import REPO_DIR, Child, Cores, QuietGate, free_port, wait_for_port


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    via: str  # direct | nginx | wsproxy
    transport: str = "sse"  # sse | ws
    upstream: str = "responses"  # responses | chat
    http2: bool = False
    deflate: bool = True

    @property
    def baseline(self) -> str:
        return "direct-chat" if self.upstream == "chat" else "direct"

    @property
    def provider(self) -> str:
        return {
            ("responses", False): "oa1",
            ("responses", True): "oa2",
            ("chat", False): "cc1",
            ("chat", True): "cc2",
        }[(self.upstream, self.http2)]


TARGETS: dict[str, Target] = {t.key: t for t in (
    Target("direct", "direct (SSE)", "direct"),
    Target("direct-chat", "direct Chat (SSE)", "direct", upstream="chat"),
    Target("nginx", "nginx (SSE)", "nginx"),
    Target("ws-sse", "wsproxy SSE", "wsproxy"),
    Target("ws-ws", "wsproxy WS", "wsproxy", transport="ws"),
    Target("ws-ws-raw", "wsproxy WS, no deflate", "wsproxy", transport="ws", deflate=False),
    Target("ws-sse-h2", "wsproxy SSE, h2 upstream", "wsproxy", http2=True),
    Target("ws-ws-h2", "wsproxy WS, h2 upstream", "wsproxy", transport="ws", http2=True),
    Target("ws-sse-cc", "wsproxy SSE, Chat upstream", "wsproxy", upstream="chat"),
    Target("ws-ws-cc", "wsproxy WS, Chat upstream", "wsproxy", transport="ws", upstream="chat"),
)}  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    """Where and how one load-generator connection sends its requests."""

    port: int
    transport: str
    path: str
    model: str
    chat: bool  # the client receives Chat chunks (direct Chat baseline only)
    deflate: bool = True

    def body(self, extra: dict[str, object] | None = None) -> bytes:
        if self.chat:
            payload: dict[str, object] = {
                "model": self.model,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Write a story."}],
            }
        else:
            payload = {
                "model": self.model,
                "input": [{"role": "user", "content": "Write a story."}],
                "store": False,
            }
            if self.transport == "ws":
                payload = {"type": "response.create", **payload}
            else:
                payload["stream"] = True
        if extra:
            payload.update(extra)
        return orjson.dumps(payload)


def _proxy_config(upstream_port: int) -> str:
    base = f"http://127.0.0.1:{upstream_port}/v1"
    common = (
        'api_key = "sk-bench"\nmax_connections = 1024\nmax_keepalive_connections = 1024\nmax_retries = 0\n'
    )
    providers = ""
    for name, kind, h2 in (
        ("oa1", "openai", False),
        ("oa2", "openai", True),
        ("cc1", "chat_completions", False),
        ("cc2", "chat_completions", True),
    ):
        http2 = "http2 = true\nhttp2_prior_knowledge = true\n" if h2 else "http2 = false\n"
        providers += f'\n[providers.{name}]\nkind = "{kind}"\nbase_url = "{base}"\n{http2}{common}'
    return (
        'log_level = "warning"\ndefault_provider = "oa1"\n\n[store]\nbackend = "memory"\n\n'
        "[limits]\nshutdown_grace = 1.0\nmax_concurrent_responses = 100000\n" + providers
    )


def _nginx_config(tmp: Path, port: int, upstream_port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 30000;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream fake {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Lab:
    """The fake upstream, wsproxy and nginx as child processes, each on a free 127.0.0.1 port."""

    def __init__(
        self, tmp: Path, cores: Cores, use_nginx: bool = True, proxy_src: Path | None = None
    ) -> None:
        self.tmp = tmp
        self.proxy_src = proxy_src or REPO_DIR
        self.cores = cores
        self.upstream_port = free_port()
        self.proxy_port = free_port()
        self.nginx_port = free_port()
        self.upstream: Child | None = None
        self.proxy: Child | None = None
        self.nginx: Child | None = None
        self.nginx_bin = find_nginx() if use_nginx else None
        self.broken: dict[str, str] = {}  # target -> why its preflight failed
        self.quiet = QuietGate()

    def pids(self) -> list[int]:
        """Our server processes (their CPU is not 'other processes')."""
        return [c.pid for c in (self.upstream, self.proxy, self.nginx) if c is not None and c.alive()]

    # -- processes ------------------------------------------------------------------------------

    def start(self) -> None:
        self.start_upstream()
        self.start_proxy()
        if self.nginx_bin:
            self.start_nginx()

    def start_upstream(self) -> None:
        self.upstream = Child(
            "upstream",
            [sys.executable, "-m", "bench.upstream", "--port", str(self.upstream_port)],
            self.tmp / "upstream.log",
            self.cores.harness,
            cwd=REPO_DIR,
        ).start()
        wait_for_port(self.upstream_port, self.upstream)

    def start_proxy(self) -> None:
        cfg = self.tmp / "wsproxy.toml"
        cfg.write_text(_proxy_config(self.upstream_port))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WSPROXY_", "OPENAI_", "ANTHROPIC_"))}
        env["PYTHONPATH"] = str(self.proxy_src)
        self.proxy = Child(
            "wsproxy",
            [sys.executable, "-m", "wsproxy", "serve", "--config", str(cfg), "--port", str(self.proxy_port)],
            self.tmp / "wsproxy.log",
            self.cores.proxy,
            env=env,
            cwd=self.proxy_src,
        ).start()
        wait_for_port(self.proxy_port, self.proxy)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy_port}/healthz", timeout=10) as r:
            r.read()

    def restart_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.proxy_port = free_port()
        self.start_proxy()

    def start_nginx(self) -> None:
        assert self.nginx_bin
        conf = self.tmp / "nginx.conf"
        conf.write_text(_nginx_config(self.tmp, self.nginx_port, self.upstream_port))
        self.nginx = Child(
            "nginx",
            [self.nginx_bin, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "nginx-error.log")],
            self.tmp / "nginx.log",
            self.cores.proxy,
        ).start()
        wait_for_port(self.nginx_port, self.nginx)

    def stop(self) -> None:
        for child in (self.nginx, self.proxy, self.upstream):
            if child is not None:
                child.stop()

    # -- targets --------------------------------------------------------------------------------

    def available(self, key: str) -> bool:
        return key not in self.broken and (TARGETS[key].via != "nginx" or self.nginx is not None)

    def endpoint(self, target: Target, model: str) -> Endpoint:
        if target.via == "wsproxy":
            return Endpoint(
                self.proxy_port,
                target.transport,
                "/v1/responses",
                f"{target.provider}@{model}",
                chat=False,
                deflate=target.deflate,
            )
        port = self.nginx_port if target.via == "nginx" else self.upstream_port
        path = "/v1/chat/completions" if target.upstream == "chat" else "/v1/responses"
        return Endpoint(port, "sse", path, model, chat=target.upstream == "chat")

    def server_child(self, target: Target) -> Child | None:
        """The process whose CPU a run of ``target`` charges (None for direct)."""
        return {"wsproxy": self.proxy, "nginx": self.nginx}.get(target.via)

    def server_cpu(self, target: Target) -> Callable[[], float] | None:
        """CPU seconds so far of the server under test (nginx: master + worker)."""
        child = self.server_child(target)
        if child is None:
            return None
        tree = target.via == "nginx"
        return lambda: child.cpu_seconds(tree=tree)

    def upstream_stats(self, reset: bool = False) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.upstream_port}/stats" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            data: dict[str, float] = orjson.loads(r.read())
        return data
