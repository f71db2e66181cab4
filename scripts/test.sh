#!/usr/bin/env bash
# Runs the whole test suite from a clean checkout: makes .venv, installs wsproxy with its test
# dependencies, installs redis-server, chromium and prometheus with apt when they are missing,
# then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# Services the tests start themselves (on free ports, stopped by PID): redis-server for the Redis
# store, chromium for the playground, prometheus and promtool for /metrics. (Debian's packages
# also start system-wide servers; the tests do not use those.)
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,redis,dev]"
exec .venv/bin/python -m pytest "$@"
