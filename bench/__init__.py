"""wsproxy benchmarks: a fast fake upstream, a load generator, scenarios, and the report.

Run ``python -m bench.run`` (see bench/README.md).
"""
