#!/usr/bin/env bash
# Runs every test, on a fresh Debian machine as on a developer's: first
# installs what the tests need and is missing (as root, or through sudo),
# then runs the workspace's tests. Extra arguments go to `cargo test`.
#
# What the tests need, and why:
# - redis-server, redis-tools, redis-sentinel: the Redis store's tests start
#   real servers, clusters and sentinels on free loopback ports;
# - fonts-dejavu-core: `tollgate simulate` draws the text of its plots;
# - openssl: the TLS test makes a throwaway certificate authority.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
command -v redis-server >/dev/null || missing="$missing redis-server"
command -v redis-cli >/dev/null || missing="$missing redis-tools"
command -v redis-sentinel >/dev/null || missing="$missing redis-sentinel"
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$missing fonts-dejavu-core"
command -v openssl >/dev/null || missing="$missing openssl"
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

exec cargo test --workspace --all-features "$@"
