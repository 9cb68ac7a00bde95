#!/usr/bin/env bash
# Every benchmark of the project, one after the other on this machine, each
# with the baseline it compares against, then the comparison table
# (scripts/bench-summary.py): subject, baseline, ratio and goal per row.
#
#   scripts/bench-all.sh                    # everything (about 35 minutes)
#   QUICK=1 scripts/bench-all.sh            # shorter runs where a bench has a knob
#   OUT=/tmp/bench scripts/bench-all.sh     # keep the full logs there
#
# What runs (a missing piece is skipped with a message, never an error):
#   1. cargo bench -p tollgate --bench memory_store   memory store vs governor
#   2. cargo bench -p tollgate-redis --bench redis_store
#                                                     RedisStore vs redis-benchmark of the same FCALL
#      scripts/bench-script-cpu.sh                    Redis CPU per decision vs plain commands
#   3. cargo bench -p tollgate-redis --bench flood    deny cache on/off, Redis down/hung
#   4. scripts/bench-middleware.sh                    axum route with vs without the layer (wrk)
#   5. scripts/bench-server.sh                        the server (if the script exists)
#   6. tollgate bench direct                          the library in process: memory, then Redis
#   7. tollgate bench http                            the demo API, Artillery's scenario shortened
#
# Needs: redis-server and redis-cli (2, 3, 6), redis-benchmark (2), wrk (4).
# Runs are sequential: benchmarks sharing the CPUs would measure each other.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$(mktemp -d -t tollgate-bench-XXXXXX)}
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then
  export TOLLGATE_BENCH_SECS=${TOLLGATE_BENCH_SECS:-1}
  export DURATION=${DURATION:-3s} RUNS=${RUNS:-1}
  TOOL_SECS=2s
else
  TOOL_SECS=10s
fi

declare -a SUMMARY=()
note() { SUMMARY+=("$*"); }

# run NAME COMMAND...: runs it with output to $OUT/NAME.log (and the screen).
run() {
  local name=$1
  shift
  echo
  echo "=== $name: $*"
  if "$@" 2>&1 | tee "$OUT/$name.log"; then
    note "## $name: ok ($OUT/$name.log)"
  else
    note "## $name: FAILED (exit ${PIPESTATUS[0]}, see $OUT/$name.log)"
  fi
}
skip() { echo; echo "=== $1: skipped: $2"; note "## $1: skipped: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }

# Criterion's summary lines: each benchmark's name and [low median high] time.
criterion_lines() {
  awk '{ if ($0 ~ /time:/) { if ($1 == "time:") print "  " prev "  " $0; else print "  " $0 } \
         else if (NF) prev = $0 }' "$1" | sed -E 's/[ ]+/ /g'
}
# The end of a log without cargo's own lines: where benches print their results.
results_tail() {
  grep -vE '^\s*(Compiling|Finished|Running|Blocking|Downloaded|Downloading|warning|Updating)|^$' "$1" | tail -n "${2:-30}"
}

# 1. Memory store vs governor.
run memory_store cargo bench -p tollgate --bench memory_store -- --noplot
[ -f "$OUT/memory_store.log" ] && note "$(criterion_lines "$OUT/memory_store.log")"

# 2, 3. Redis store benches: they start their own redis-server.
if have redis-server && have redis-cli; then
  if have redis-benchmark; then
    run redis_store cargo bench -p tollgate-redis --bench redis_store
    note "$(results_tail "$OUT/redis_store.log" 60)"
    if [ -n "${QUICK:-}" ]; then
      run script_cpu env ROUNDS=1 REQUESTS=30000 bash scripts/bench-script-cpu.sh
    else
      run script_cpu bash scripts/bench-script-cpu.sh
    fi
    note "$(tail -n 8 "$OUT/script_cpu.log")"
  else
    skip redis_store "redis-benchmark not found (apt-get install redis-tools)"
    skip script_cpu "redis-benchmark not found (apt-get install redis-tools)"
  fi
  if [ -f crates/redis/benches/flood.rs ]; then
    run flood cargo bench -p tollgate-redis --bench flood
    note "$(results_tail "$OUT/flood.log" 30)"
  else
    skip flood "crates/redis/benches/flood.rs does not exist"
  fi
else
  skip redis_store "redis-server/redis-cli not found (apt-get install redis-server redis-tools)"
  skip script_cpu "redis-server/redis-cli not found"
  skip flood "redis-server/redis-cli not found"
fi

# 4, 5. Scripts of other crates, when they exist.
for script in bench-middleware bench-server; do
  if [ -x "scripts/$script.sh" ] || [ -f "scripts/$script.sh" ]; then
    run "$script" bash "scripts/$script.sh"
    note "$(grep -E 'median|ratio|req/s|p99' "$OUT/$script.log" | tail -n 10)"
  else
    skip "$script" "scripts/$script.sh does not exist"
  fi
done

# 6, 7. tollgate bench.
if cargo build --quiet --release -p tollgate-cli 2>"$OUT/build-cli.log"; then
  TOLLGATE=target/release/tollgate
  run bench_direct_memory "$TOLLGATE" bench direct --store memory --concurrency 8 \
    --duration "$TOOL_SECS" --keys 10000 --key-distribution zipf --policy "gcra 1000000/1s"
  note "$(grep -E '^(target|requests|latency|accuracy)' "$OUT/bench_direct_memory.log")"
  if have redis-server; then
    port=$((20000 + RANDOM % 20000))
    dir=$(mktemp -d)
    redis-server --port "$port" --save '' --appendonly no --dir "$dir" --daemonize no >/dev/null &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    run bench_direct_redis "$TOLLGATE" bench direct --store "redis://127.0.0.1:$port" \
      --instances 4 --concurrency 32 --duration "$TOOL_SECS" --keys 10000 \
      --key-distribution zipf --policy "gcra 1000000/1s"
    note "$(grep -E '^(target|requests|latency|accuracy)' "$OUT/bench_direct_redis.log")"
    kill "$redis_pid" 2>/dev/null
    wait "$redis_pid" 2>/dev/null
    rm -rf "$dir"
  else
    skip bench_direct_redis "redis-server not found"
  fi
  if [ -f crates/tower/examples/api_server.rs ] &&
    cargo build --quiet --release -p tollgate-tower --example api_server 2>"$OUT/build-api.log"; then
    port=$((20000 + RANDOM % 20000))
    target/release/examples/api_server --port "$port" >/dev/null 2>&1 &
    api_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    run bench_http_api_server "$TOLLGATE" bench http "http://127.0.0.1:$port/api/resource" \
      --rate 100 --duration "$TOOL_SECS" --policy "sliding_log 100/1m"
    note "$(grep -E '^(target|requests|outcomes|latency|accuracy)' "$OUT/bench_http_api_server.log")"
    kill "$api_pid" 2>/dev/null
    wait "$api_pid" 2>/dev/null
  else
    skip bench_http_api_server "crates/tower/examples/api_server.rs missing or does not build"
  fi
else
  skip "tollgate bench" "tollgate-cli does not build (see $OUT/build-cli.log)"
fi

echo
echo "================ summary ($(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)) ================"
for line in "${SUMMARY[@]}"; do
  [ -n "$line" ] && printf '%s\n' "$line"
done
echo
echo "================ comparison table ================"
python3 scripts/bench-summary.py "$OUT" | tee "$OUT/table.md"
echo "full logs: $OUT"
