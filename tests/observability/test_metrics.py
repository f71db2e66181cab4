"""The metrics module: every declared metric renders, undeclared names fail, label values from
requests are bounded, and several processes' values merge into one exposition."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsproxy.observability.metrics import DEFINITIONS, MAX_LABEL_VALUES, Metrics


def sample(text: str, name: str) -> float:
    """The value of the series ``name`` (with its labels written out) in an exposition text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in:\n{text}")


def test_every_definition_has_help_and_type() -> None:
    text = Metrics().render().decode()
    for name, d in DEFINITIONS.items():
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} {d.kind}" in text


def test_counter_histogram_and_gauge_values() -> None:
    m = Metrics()
    m.inc("wsproxy_errors_total", code="rate_limit_exceeded")
    m.inc("wsproxy_errors_total", 2, code="rate_limit_exceeded")
    m.gauge("wsproxy_ws_sessions", 1)
    m.gauge("wsproxy_ws_sessions", 1)
    m.gauge("wsproxy_ws_sessions", -1)
    m.observe("wsproxy_time_to_first_token_seconds", 0.003, provider="local")
    text = m.render().decode()
    assert sample(text, 'wsproxy_errors_total{code="rate_limit_exceeded"}') == 3
    assert sample(text, "wsproxy_ws_sessions") == 1
    assert sample(text, 'wsproxy_time_to_first_token_seconds_bucket{le="0.0025",provider="local"}') == 0
    assert sample(text, 'wsproxy_time_to_first_token_seconds_bucket{le="0.005",provider="local"}') == 1
    assert sample(text, 'wsproxy_time_to_first_token_seconds_count{provider="local"}') == 1


def test_undeclared_metric_or_label_is_an_error() -> None:
    m = Metrics()
    with pytest.raises(KeyError):
        m.inc("wsproxy_made_up_total")
    with pytest.raises(ValueError):
        m.inc("wsproxy_errors_total", status="500")


def test_usage_counts_every_token_kind() -> None:
    m = Metrics()
    usage = {
        "input_tokens": 10,
        "output_tokens": 7,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens_details": {"reasoning_tokens": 3},
    }
    m.record_usage("alice", "local", usage, model="local", status="completed")
    text = m.render().decode()
    assert sample(text, 'wsproxy_responses_total{model="local",provider="local",status="completed"}') == 1
    for kind, value in (("input", 10), ("output", 7), ("cached", 4), ("reasoning", 3)):
        assert sample(text, f'wsproxy_tokens_total{{kind="{kind}",model="local",provider="local"}}') == value


def test_model_label_values_are_bounded() -> None:
    m = Metrics()
    for i in range(MAX_LABEL_VALUES + 50):
        m.record_usage(None, "p", None, model=f"model-{i}")
    text = m.render().decode()
    series = [line for line in text.splitlines() if line.startswith("wsproxy_responses_total{")]
    assert len(series) == MAX_LABEL_VALUES + 1
    assert sample(text, 'wsproxy_responses_total{model="other",provider="p",status="completed"}') == 50


WORKER = """
import sys
from wsproxy.observability.metrics import Metrics
m = Metrics()
m.inc("wsproxy_errors_total", float(sys.argv[1]), code="server_error")
m.gauge("wsproxy_ws_sessions", 2)
m.observe("wsproxy_response_duration_seconds", 0.2, provider="local")
"""


def test_workers_values_merge(tmp_path: Path) -> None:
    """Two processes write to one PROMETHEUS_MULTIPROC_DIR; one render shows the sums (the
    gauge of a process that has exited no longer counts: ``livesum``)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for amount in ("3", "4"):
        subprocess.run([sys.executable, "-c", WORKER, amount], env=env, check=True, timeout=30)
    text = Metrics(multiprocess_dir=str(tmp_path)).render().decode()
    assert sample(text, 'wsproxy_errors_total{code="server_error"}') == 7
    assert sample(text, 'wsproxy_response_duration_seconds_count{provider="local"}') == 2


def test_every_metric_the_code_names_is_declared() -> None:
    """A metric name written anywhere in wsproxy (``metrics.inc("wsproxy_...")``, a helper that
    passes one on) is declared, so no call site can raise KeyError at run time."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "wsproxy"
    named: set[str] = set()
    for path in root.rglob("*.py"):
        if path.name == "metrics.py" and path.parent.name == "observability":
            continue
        named.update(re.findall(r'"(wsproxy_[a-z_]+)"', path.read_text()))
    # Not metrics: ASGI scope keys and config attributes that share the prefix.
    named -= {"wsproxy_deflate"}
    assert named, "the scan found no metric names"
    assert named <= set(DEFINITIONS), sorted(named - set(DEFINITIONS))
