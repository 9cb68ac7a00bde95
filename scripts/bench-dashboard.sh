#!/usr/bin/env bash
# What the dashboard costs on the hot path (issue 20): throughput of
# `tollgate serve` on the memory store with `server.dashboard.enabled`
# true and false, in the same run. Two servers run side by side (one of
# each), and `tollgate bench api` drives one at a time, alternating
# enabled, disabled, enabled, ... so that drift of the machine hits both
# alike. Two loads:
#   deny:  `fixed_window 1/1h`, 1000 keys: after each key's first request
#          every check is denied (by the deny cache), and every denial is
#          offered to the heavy-hitters sketch: the dashboard's worst case;
#   allow: `gcra 1000000/1s`, 1000 keys: every check allowed; the sketch
#          is not touched (only the per-second sampler runs).
# Reports, per (load, server), the medians of RUNS runs of requests/s and
# of the server's CPU time per request (user + system, from
# /proc/<pid>/stat around each run: on a shared machine it moves far less
# than throughput, which other processes' load takes from), and the
# ratios enabled / disabled. 127.0.0.1 only; each run is DURATION long.
#
# Then, as throughput on a shared machine cannot resolve a few per cent,
# the deterministic count: instructions per request of the server under
# valgrind (cachegrind, no cache simulation), enabled and disabled, on
# the deny load; each from two runs of N_SHORT and N_LONG requests, so
# start-up and shutdown cancel out in (I_long - I_short) / (N_long -
# N_short). Skipped with INSTRUCTIONS=0 (or without valgrind).
#
#   scripts/bench-dashboard.sh
#   RUNS=7 DURATION=10s CONCURRENCY=64 scripts/bench-dashboard.sh
#   RUNS=0 scripts/bench-dashboard.sh          # instructions only
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
RUNS=${RUNS:-5}
PORT_ON=${PORT_ON:-18090}
PORT_OFF=${PORT_OFF:-18092}

cargo build --release -p tollgate-cli >&2
BIN=target/release/tollgate
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

serve_config() { # $1: port, $2: dashboard enabled (true|false)
  cat > "$WORK/$1.yaml" <<YAML
server:
  http: 127.0.0.1:$1
  grpc: 127.0.0.1:$(($1 + 1))
  dashboard:
    enabled: $2
policies:
  - name: deny
    algorithm: fixed_window
    limit: 1
    period: 1h
  - name: allow
    algorithm: gcra
    limit: 1000000
    period: 1s
YAML
}

serve() { # $1: port, $2: dashboard enabled (true|false)
  serve_config "$1" "$2"
  RUST_LOG=warn "$BIN" serve --config "$WORK/$1.yaml" >/dev/null &
  PIDS+=("$!")
  SERVER_PID[$1]=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && break; sleep 0.1; done
}
declare -A SERVER_PID
# CPU ticks (user + system) the process $1 has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
serve "$PORT_ON" true
serve "$PORT_OFF" false

RESULTS=()
for run in $(seq "$RUNS"); do
  for load in deny allow; do
    for side in on off; do
      port=$PORT_ON
      [ "$side" = off ] && port=$PORT_OFF
      before=$(cpu_ticks "${SERVER_PID[$port]}")
      read -r rps requests < <("$BIN" bench api "http://127.0.0.1:$port" --policy-name "$load" --keys 1000 \
        --key-prefix "$load-" --concurrency "$CONCURRENCY" --duration "$DURATION" --json |
        python3 -c 'import json, sys; r = json.load(sys.stdin); assert r["errors"] == 0, r; print("%.0f %d" % (r["throughput"], r["requests"]))')
      after=$(cpu_ticks "${SERVER_PID[$port]}")
      cpu_us=$(python3 -c "print('%.2f' % (($after - $before) * $TICK_US / $requests))")
      echo "run $run $load dashboard=$side: $rps requests/s, $cpu_us us of server CPU per request" >&2
      RESULTS+=("$load $side $rps $cpu_us")
    done
  done
done

if [ "$RUNS" -gt 0 ]; then
echo "| load | req/s enabled | req/s disabled | enabled / disabled | server CPU µs/request enabled | disabled | enabled / disabled |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${RESULTS[@]}" | python3 -c '
import sys, statistics, collections
rps, cpu = collections.defaultdict(list), collections.defaultdict(list)
for line in sys.stdin:
    load, side, r, c = line.split()
    rps[(load, side)].append(float(r))
    cpu[(load, side)].append(float(c))
med = statistics.median
for load in ("deny", "allow"):
    r_on, r_off = med(rps[(load, "on")]), med(rps[(load, "off")])
    c_on, c_off = med(cpu[(load, "on")]), med(cpu[(load, "off")])
    print("| %s | %.0f | %.0f | %.3f | %.2f | %.2f | %.3f |" % (load, r_on, r_off, r_on / r_off, c_on, c_off, c_on / c_off))
'
echo "runs (load side req/s cpu_us):" >&2
printf '%s\n' "${RESULTS[@]}" >&2
fi

[ "${INSTRUCTIONS:-1}" = 0 ] && exit 0
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind): no instruction counts" >&2; exit 0; }
N_SHORT=${N_SHORT:-2000}
N_LONG=${N_LONG:-8000}
PORT_VG=${PORT_VG:-18094}
instructions() { # $1: dashboard enabled, $2: load, $3: requests; prints the server's instructions
  serve_config "$PORT_VG" "$1"
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    "$BIN" serve --config "$WORK/$PORT_VG.yaml" >/dev/null 2>"$WORK/vg.err" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT_VG/healthz" >/dev/null && break; sleep 0.1; done
  "$BIN" bench api "http://127.0.0.1:$PORT_VG" --policy-name "$2" --keys 100 --key-prefix "$2-" \
    --concurrency 8 --max-requests "$3" --duration 600s --json >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
  awk '/I +refs:/ { gsub(",", "", $4); print $4 }' "$WORK/vg.err"
}
echo
echo "| load | instructions per request, enabled | disabled | enabled - disabled | enabled / disabled |"
echo "|---|---|---|---|---|"
for load in deny allow; do
  declare -A per_request=()
  for side in true false; do
    short=$(instructions "$side" "$load" "$N_SHORT")
    long=$(instructions "$side" "$load" "$N_LONG")
    per_request[$side]=$(( (long - short) / (N_LONG - N_SHORT) ))
    echo "$load dashboard=$side: $short instructions for $N_SHORT requests, $long for $N_LONG" >&2
  done
  on=${per_request[true]}; off=${per_request[false]}
  python3 -c "print('| $load | $on | $off | %+d | %.3f |' % ($on - $off, $on / $off))"
done
