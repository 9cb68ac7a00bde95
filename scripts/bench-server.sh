#!/usr/bin/env bash
# Throughput and latency of `tollgate serve` on the memory store and on a
# local Redis: POST /v1/check driven by wrk, then POST /v1/check and Envoy
# RLS ShouldRateLimit driven by `tollgate bench` (one Rust client for both
# protocols, so they compare side by side). On Redis, the baseline is the
# raw ceiling: redis-benchmark sending the very FCALL the server sends
# (same script, policy and key spread), as many connections, in the same
# run. 127.0.0.1 only; each run is bounded (DURATION, default 10s); three
# runs per target, report medians.
#
#   scripts/bench-server.sh            # needs wrk, redis-server, redis-benchmark
#   DURATION=5s CONNECTIONS=64 THREADS=2 scripts/bench-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
HTTP_PORT=${HTTP_PORT:-18080}
GRPC_PORT=${GRPC_PORT:-18081}
REDIS_PORT=${REDIS_PORT:-16399}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -p tollgate-cli -p tollgate-redis --bins --example decision_script >&2
BIN=target/release/tollgate
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/post.lua" <<'LUA'
-- One key per connection-ish: 1000 keys, a limit high enough that most
-- checks are allowed (the common case).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"policy":"bench","key":"user-%d"}', counter % 1000)
  return wrk.format(nil, "/v1/check", nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
LUA

# config "<store section>": writes $WORK/tollgate.yaml.
source scripts/bench-server-config.sh

run_store() { # $1: name
  RUST_LOG=warn "$BIN" serve --config "$WORK/tollgate.yaml" >/dev/null &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
  for run in $(seq "$RUNS"); do
    local line
    line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/post.lua" "http://127.0.0.1:$HTTP_PORT" | grep '^RESULT')
    echo "$1 run $run: $line" >&2
    TOOL_RESULTS+=("$1/http/wrk $line")
  done
  for target in api grpc; do
    local tool=()
    if [ "$target" = api ]; then
      tool=(api "http://127.0.0.1:$HTTP_PORT" --policy-name bench)
    else
      tool=(grpc "127.0.0.1:$GRPC_PORT" --domain bench --descriptor-key client)
    fi
    for run in $(seq "$RUNS"); do
      local line
      line=$("$BIN" bench "${tool[@]}" --policy "gcra 1000000/1s" --keys 1000 \
        --concurrency "$CONNECTIONS" --duration "$DURATION" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
errors = r["errors"] + sum(r["other_statuses"].values())
print("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d" % (r["throughput"],
      r["latency"]["p50_ms"] * 1000, r["latency"]["p99_ms"] * 1000, errors))')
      echo "$1 $target run $run: $line" >&2
      TOOL_RESULTS+=("$1/$target/tollgate-bench $line")
    done
  done
  kill -TERM "$pid"; wait "$pid" || true
}

# Medians of every run, one row per store/target/client; Redis rows also
# as a ratio of the ceiling measured in this run.
tool_table() {
  echo "| store/target/client | requests/s | p50 ms | p99 ms | errors | vs Redis ceiling |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${TOOL_RESULTS[@]}" | python3 -c '
import sys, statistics, collections
groups = collections.OrderedDict()
for line in sys.stdin:
    name, _, *kvs = line.split()
    groups.setdefault(name, []).append(dict(kv.split("=") for kv in kvs))
med = lambda rows, k: statistics.median(float(r[k]) for r in rows)
ceiling = groups.get("redis/ceiling/redis-benchmark")
for name, rows in groups.items():
    errors = sum(int(r["errors"]) for r in rows)
    ratio = "%.2f" % (med(rows, "rps") / med(ceiling, "rps")) if ceiling and name.startswith("redis/") else ""
    print("| %s | %.0f | %.2f | %.2f | %d | %s |" % (name, med(rows, "rps"), med(rows, "p50_us") / 1000, med(rows, "p99_us") / 1000, errors, ratio))
'
}
TOOL_RESULTS=()

config "  kind: memory"
run_store memory

if command -v redis-server >/dev/null; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  PIDS+=("$!")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  config "  kind: redis
  url: redis://127.0.0.1:$REDIS_PORT"
  run_store redis
  if command -v redis-benchmark >/dev/null; then
    # The ceiling: the same FCALL (gcra 1000000/1s, a key of 1000,
    # consuming) with no server in between; -P 1: one request per round
    # trip per connection, as the server's callers wait for each answer.
    library=$(redis-cli -p "$REDIS_PORT" FUNCTION LOAD REPLACE "$(target/release/examples/decision_script --library)")
    seconds=${DURATION%s}
    for run in $(seq "$RUNS"); do
      line=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONNECTIONS" -P 1 \
        -n $((seconds * 40000)) -r 1000 --precision 3 \
        FCALL "$library" 1 "tollgate:{user-__rand_int__}:bench" 1 1 "" "gcra 1000000 1000000 1000000 1 1" |
        tr '\r' '\n' | python3 -c '
import sys
text = sys.stdin.read()
if "ERR" in text or "NOSCRIPT" in text:
    sys.exit("redis-benchmark failed:\n" + text)
lines = text.splitlines()
rps = next(l.split(":")[1].split()[0] for l in lines if l.strip().startswith("throughput summary:"))
i = next(i for i, l in enumerate(lines) if "latency summary" in l)
header, values = lines[i + 1].split(), lines[i + 2].split()
ms = dict(zip(header, values))
print("RESULT rps=%s p50_us=%d p99_us=%d errors=0" % (rps, float(ms["p50"]) * 1000, float(ms["p99"]) * 1000))')
      echo "redis ceiling run $run: $line" >&2
      TOOL_RESULTS+=("redis/ceiling/redis-benchmark $line")
    done
  else
    echo "redis-benchmark not found (apt-get install redis-tools): no ceiling" >&2
  fi
fi
tool_table
