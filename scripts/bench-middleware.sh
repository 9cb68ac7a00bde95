#!/usr/bin/env bash
# Throughput of a hello-world axum route with the tollgate-tower layer
# (memory store, a policy that never denies) against the same route without
# it, served by one process (crates/tower/examples/bench_server.rs) and
# measured with wrk over loopback; and, as the floor under that ratio, the
# route wrapped by a `route_layer` that does nothing (what axum's wrapping
# costs any middleware). Runs alternate plain/noop/limited so drift in the
# machine hits all alike; the median of RUNS runs of each is reported.
#
#   scripts/bench-middleware.sh                  # wrk -t2 -c50 -d10s, 3 runs each
#   RUNS=5 DURATION=30s scripts/bench-middleware.sh
#   scripts/bench-middleware.sh instructions     # valgrind: instructions per request
#
# Needs wrk (apt-get install wrk); the instructions mode needs valgrind.
# Results go in docs/MIDDLEWARE.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = instructions ]; then
  # Instructions per request, in process (crates/tower/examples/bench_inprocess.rs):
  # the difference between N and N + 10 000 requests, so start-up cancels out.
  command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
  cargo build --quiet --release -p tollgate-tower --example bench_inprocess
  count() {
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
      target/release/examples/bench_inprocess "$1" "$2" 2>&1 >/dev/null |
      awk '/I *refs/ { gsub(",", "", $4); print $4 }'
  }
  for route in /plain /noop /limited /handler; do
    a=$(count "$route" 2000)
    b=$(count "$route" 12000)
    echo "$route: $(((b - a) / 10000)) instructions per request"
  done
  exit 0
fi

THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-50}
DURATION=${DURATION:-10s}
RUNS=${RUNS:-3}
PORT=${PORT:-3901}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }

cargo build --quiet --release -p tollgate-tower --example bench_server
target/release/examples/bench_server --port "$PORT" >/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

rps() { # route -> requests per second
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$1" "http://127.0.0.1:$PORT/$2" |
    awk '/^Requests\/sec:/ { print $2 }'
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $RUNS runs each, $(nproc) CPUs"
rps 2s plain >/dev/null # warm up every path
rps 2s noop >/dev/null
rps 2s limited >/dev/null
plain=() noop=() limited=()
for run in $(seq "$RUNS"); do
  p=$(rps "$DURATION" plain)
  n=$(rps "$DURATION" noop)
  l=$(rps "$DURATION" limited)
  plain+=("$p") noop+=("$n") limited+=("$l")
  printf 'run %d: plain %s req/s, noop %s req/s, limited %s req/s (ratio %s)\n' "$run" "$p" "$n" "$l" \
    "$(awk -v l="$l" -v p="$p" 'BEGIN { printf "%.3f", l / p }')"
done
p=$(echo "${plain[*]}" | median)
n=$(echo "${noop[*]}" | median)
l=$(echo "${limited[*]}" | median)
printf 'median: plain %s req/s, limited %s req/s, ratio %s\n' "$p" "$l" \
  "$(awk -v l="$l" -v p="$p" 'BEGIN { printf "%.3f", l / p }')"
printf 'floor: noop %s req/s, ratio %s (a route_layer doing nothing)\n' "$n" \
  "$(awk -v n="$n" -v p="$p" 'BEGIN { printf "%.3f", n / p }')"
