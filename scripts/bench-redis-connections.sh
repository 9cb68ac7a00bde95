#!/usr/bin/env bash
# `tollgate serve` on the memory store and on a local Redis over 1, 2 and 4
# connections (`store.connections`), side by side: POST /v1/check driven by
# wrk and Envoy RLS ShouldRateLimit driven by `tollgate bench grpc`. The
# targets alternate within each run, so drift in a shared machine hits all
# alike; RUNS runs (default 3) of DURATION each (default 6s), then the
# median of each target and its ratio to the memory store's in the same
# run. 127.0.0.1 only.
#
#   scripts/bench-redis-connections.sh             # needs wrk and redis-server
#   RUNS=5 DURATION=10s CONNS="1 2 3 4" scripts/bench-redis-connections.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-6s}
RUNS=${RUNS:-3}
CONNS=${CONNS:-1 2 4}
CONNECTIONS=${CONNECTIONS:-64}
HTTP_PORT=${HTTP_PORT:-18180}
GRPC_PORT=${GRPC_PORT:-18181}
REDIS_PORT=${REDIS_PORT:-16499}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
cargo build --quiet --release -p tollgate-cli >&2
BIN=target/release/tollgate
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
PIDS+=("$!")
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/check", nil,
    string.format('{"policy":"bench","key":"user-%d"}', counter % 1000))
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f\n", summary.requests / (summary.duration / 1e6)))
end
LUA

# config "<store section>": writes $WORK/tollgate.yaml.
source scripts/bench-server-config.sh

measure() { # $1: target name; prints "name http grpc"
  RUST_LOG=warn "$BIN" serve --config "$WORK/tollgate.yaml" >/dev/null &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
  local http grpc
  http=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/post.lua" "http://127.0.0.1:$HTTP_PORT" | awk '/^RESULT/ { print $2 }')
  grpc=$("$BIN" bench grpc "127.0.0.1:$GRPC_PORT" --domain bench --descriptor-key client \
    --policy "gcra 1000000/1s" --keys 1000 --concurrency "$CONNECTIONS" --duration "$DURATION" --json |
    python3 -c 'import json, sys; print("%.0f" % json.load(sys.stdin)["throughput"])')
  kill -TERM "$pid"; wait "$pid" || true
  echo "$1 $http $grpc"
}

for run in $(seq "$RUNS"); do
  config "  kind: memory"
  measure memory | tee -a "$WORK/results" >&2
  for n in $CONNS; do
    config "  kind: redis
  url: redis://127.0.0.1:$REDIS_PORT
  prefix: bench-$run-$n
  connections: $n"
    measure "redis-$n" | tee -a "$WORK/results" >&2
  done
  echo "run $run" >> "$WORK/results"
done

python3 - "$WORK/results" <<'PY'
import collections, statistics, sys
runs, current = [], {}
for line in open(sys.argv[1]):
    words = line.split()
    if words[0] == "run":
        runs.append(current); current = {}
    else:
        current[words[0]] = (float(words[1]), float(words[2]))
names = list(runs[0])
print("| target | HTTP requests/s | HTTP vs memory | gRPC calls/s | gRPC vs memory | ratios in each run (HTTP / gRPC) |")
print("|---|---|---|---|---|---|")
for name in names:
    http = [r[name][0] for r in runs]; grpc = [r[name][1] for r in runs]
    rh = [r[name][0] / r["memory"][0] for r in runs]; rg = [r[name][1] / r["memory"][1] for r in runs]
    print("| %s | %.0f | %.2f | %.0f | %.2f | %s |" % (name, statistics.median(http), statistics.median(rh),
          statistics.median(grpc), statistics.median(rg),
          ", ".join("%.2f / %.2f" % (a, b) for a, b in zip(rh, rg))))
PY
