#!/usr/bin/env bash
# Leases on one hot key across a fleet (issue 17): three `tollgate serve`
# processes on one Redis, one leased fixed_window key, each server
# overloaded by its own `tollgate bench api` with the same demand.
#
#   scripts/bench-lease-fleet.sh                  # 3 runs
#   RUNS=1 scripts/bench-lease-fleet.sh           # one run
#   LEASE= scripts/bench-lease-fleet.sh           # the same without leasing
#   OUT=/tmp/fleet scripts/bench-lease-fleet.sh   # keep the logs there
#   CLUSTER=1 scripts/bench-lease-fleet.sh        # on a 3-master Redis Cluster
#   RATE=1000 scripts/bench-lease-fleet.sh        # open model: each load sends RATE
#                                                 # requests/s (equal demand by
#                                                 # construction), not WORKERS workers
#
# Each run lies inside one window of the policy (fixed_window LIMIT/1m; the
# run starts a second after a minute begins and lasts SECS, 20 s), so the
# fleet's admissions of the run are the admissions of that window: the
# allowance is LIMIT, over-admission is admitted > LIMIT, utilisation is
# admitted / LIMIT (the demand exceeds LIMIT within seconds), and each
# instance's share is its admitted / the fleet's. Also Redis script calls
# (INFO commandstats) per admitted decision. Needs redis-server, redis-cli,
# curl, python3; builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SECS=${SECS:-20}
LIMIT=${LIMIT:-50000}
WORKERS=${WORKERS:-16}
LEASE=${LEASE-"{ max: 100, ttl: 100ms }"}
CLUSTER=${CLUSTER:-}
RATE=${RATE:-}
OUT=${OUT:-$(mktemp -d -t tollgate-fleet-XXXXXX)}
mkdir -p "$OUT"

cargo build --quiet --release -p tollgate-cli
BIN=target/release/tollgate

PIDS=()
WORK=$(mktemp -d)
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Free loopback ports (bound to 0, then released), nine of them: Redis,
# three servers' HTTP and gRPC, two more Cluster masters.
read -r -a PORTS <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
REDIS_PORT=${PORTS[0]}
REDIS_PORTS=("$REDIS_PORT")
[ -n "$CLUSTER" ] && REDIS_PORTS+=("${PORTS[7]}" "${PORTS[8]}")
for port in "${REDIS_PORTS[@]}"; do
  mkdir -p "$WORK/redis-$port"
  cluster_args=()
  [ -n "$CLUSTER" ] && cluster_args=(--cluster-enabled yes --cluster-config-file "$WORK/redis-$port/nodes.conf")
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis-$port" \
    "${cluster_args[@]}" --daemonize no >/dev/null &
  PIDS+=("$!")
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
if [ -n "$CLUSTER" ]; then
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS_PORTS[@]}") --cluster-replicas 0 \
    --cluster-yes >/dev/null
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" cluster info | grep -q 'cluster_state:ok' && break
    sleep 0.1
  done
  STORE="  kind: redis_cluster
  urls: [$(printf 'redis://127.0.0.1:%s,' "${REDIS_PORTS[@]}" | sed 's/,$//')]"
else
  STORE="  kind: redis
  url: redis://127.0.0.1:$REDIS_PORT"
fi

lease_line=""
[ -n "$LEASE" ] && lease_line="    lease: $LEASE"
HTTP_PORTS=()
for i in 1 2 3; do
  http=${PORTS[$((2 * i - 1))]}
  HTTP_PORTS+=("$http")
  cat >"$WORK/tollgate-$i.yaml" <<YAML
server:
  http: 127.0.0.1:$http
  grpc: 127.0.0.1:${PORTS[$((2 * i))]}
store:
$STORE
  # A saturated 2-core machine must not turn slow calls into failures:
  # closed (a failure denies) and a long timeout keep every answer exact.
  timeout: 1s
  on_failure: closed
policies:
  - name: hot
    algorithm: fixed_window
    limit: $LIMIT
    period: 1m
$lease_line
YAML
  RUST_LOG=warn "$BIN" serve --config "$WORK/tollgate-$i.yaml" >"$OUT/serve-$i.log" 2>&1 &
  PIDS+=("$!")
done
for i in 1 2 3; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${HTTP_PORTS[$((i - 1))]}/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:${HTTP_PORTS[$((i - 1))]}/healthz" >/dev/null ||
    { echo "server $i did not start:" >&2; cat "$OUT/serve-$i.log" >&2; exit 1; }
done

# Script calls on every master.
script_calls() {
  for port in "${REDIS_PORTS[@]}"; do redis-cli -p "$port" INFO commandstats; done | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_(fcall|fcall_ro|evalsha|evalsha_ro|eval|eval_ro):/ { n += $3 } END { print n + 0 }'
}

for run in $(seq "$RUNS"); do
  # Start a second into a minute, so the run stays inside one window.
  now=$(date +%s.%N)
  wait=$(python3 -c "import math; t=$now; print(max(0.0, 61 - t % 60) if t % 60 > 5 else max(0.0, 1 - t % 60))")
  sleep "$wait"
  before=$(script_calls)
  loads=()
  if [ -n "$RATE" ]; then model=(--rate "$RATE"); else model=(--concurrency "$WORKERS"); fi
  for i in 1 2 3; do
    "$BIN" bench api "http://127.0.0.1:${HTTP_PORTS[$((i - 1))]}" --policy-name hot --keys 1 \
      --key-prefix "fleet-$run-" "${model[@]}" --duration "${SECS}s" \
      --policy "fixed_window $LIMIT/1m" --json >"$OUT/run-$run-instance-$i.json" &
    loads+=("$!")
  done
  for pid in "${loads[@]}"; do wait "$pid"; done
  after=$(script_calls)
  echo "$((after - before))" >"$OUT/run-$run-script-calls"
  echo "run $run done" >&2
done

python3 - "$OUT" "$RUNS" "$LIMIT" <<'EOF'
import json, statistics, sys
out, runs, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"{'run':>3} {'admitted':>9} {'allowance':>9} {'over':>5} {'utilisation':>11} {'shares':>24} {'max share dev':>13} {'calls/admitted':>14} {'requests/s':>10} errors")
rows = []
for run in range(1, runs + 1):
    s = [json.load(open(f"{out}/run-{run}-instance-{i}.json")) for i in (1, 2, 3)]
    admitted = sum(x["allowed"] for x in s)
    errors = sum(x["errors"] + sum(x["other_statuses"].values()) for x in s)
    shares = [x["allowed"] / admitted if admitted else 0 for x in s]
    dev = max(abs(sh * 3 - 1) for sh in shares)
    calls = int(open(f"{out}/run-{run}-script-calls").read())
    rps = sum(x["throughput"] for x in s)
    rows.append((admitted, admitted / limit, dev, calls / max(admitted, 1), rps))
    print(f"{run:>3} {admitted:>9} {limit:>9} {max(0, admitted - limit):>5} {admitted / limit:>11.4f} "
          f"{' '.join(f'{sh:.3f}' for sh in shares):>24} {dev:>13.3f} {calls / max(admitted, 1):>14.4f} {rps:>10.0f} {errors}")
med = lambda i: statistics.median(r[i] for r in rows)
print(f"medians: utilisation {med(1):.4f}, max share deviation {med(2):.3f} (of a third), "
      f"script calls per admitted {med(3):.4f}, fleet requests/s {med(4):.0f}; "
      f"over-admitted runs: {sum(r[0] > limit for r in rows)} of {runs}")
EOF
echo "logs: $OUT" >&2
