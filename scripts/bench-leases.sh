#!/usr/bin/env bash
# Leases on one hot key (issue 17): `tollgate bench direct` on the memory
# store, on Redis without leasing and on Redis with leasing, one after the
# other in each run, so every ratio is taken within one run.
#
#   scripts/bench-leases.sh                 # 3 runs of 10 s per row
#   RUNS=1 SECS=2s scripts/bench-leases.sh  # a smoke test, not figures
#   OUT=/tmp/leases scripts/bench-leases.sh # keep the logs there
#
# Every row: one key, 4 instances, 32 closed-model workers, a policy never
# exhausted during the run (fixed_window 10^9 per hour). Needs redis-server
# and redis-cli; builds the release binary first (before taking any lock).
# Prints, per run, decisions/s and the ratio to the memory store of the same
# run, and on Redis the commands and script calls per admitted decision;
# then the medians over the runs.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SECS=${SECS:-10s}
OUT=${OUT:-$(mktemp -d -t tollgate-leases-XXXXXX)}
mkdir -p "$OUT"
POLICY="fixed_window 1000000000/1h"

cargo build --quiet --release -p tollgate-cli
TOLLGATE=target/release/tollgate

port=$((20000 + RANDOM % 20000))
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
  --daemonize no >/dev/null &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS="redis://127.0.0.1:$port"

# name|store|extra flags
ROWS=(
  "memory|memory|"
  "memory_lease_1000|memory|--lease-max 1000 --lease-ttl 100ms"
  "redis|$REDIS|"
  "redis_lease_1000|$REDIS|--lease-max 1000 --lease-ttl 100ms"
  "redis_lease_100|$REDIS|--lease-max 100 --lease-ttl 100ms"
)

for run in $(seq "$RUNS"); do
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name store extra <<<"$row"
    # shellcheck disable=SC2086 # $extra is a list of flags
    cmd=("$TOLLGATE" bench direct --store "$store" --instances 4 --concurrency 32
      --duration "$SECS" --keys 1 --policy "$POLICY" $extra --json)
    echo "run $run: ${cmd[*]}" >&2
    "${cmd[@]}" >"$OUT/$name-$run.json"
  done
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
names = ["memory", "memory_lease_1000", "redis", "redis_lease_1000", "redis_lease_100"]
table = {}
for run in range(1, runs + 1):
    memory = json.load(open(f"{out}/memory-{run}.json"))["throughput"]
    for name in names:
        s = json.load(open(f"{out}/{name}-{run}.json"))
        r = s.get("redis") or {}
        l = s.get("leases") or {}
        ok = s["accuracy"]["over_admitted"] == {} and s["errors"] == 0
        table.setdefault(name, []).append((
            s["throughput"], s["throughput"] / memory,
            r.get("commands_per_admitted"), r.get("script_calls_per_admitted"),
            l.get("forfeited"), l.get("units"), ok))
fmt = lambda v, f: "-" if v is None else format(v, f)
print(f"{'row':<20} {'run':>3} {'decisions/s':>12} {'x memory':>9} {'cmds/adm':>9} {'calls/adm':>9} {'forfeited/leased':>17}  ok")
for name in names:
    for run, (tput, ratio, cmds, calls, forf, units, ok) in enumerate(table[name], 1):
        share = None if not units else forf / units
        print(f"{name:<20} {run:>3} {tput:>12.0f} {ratio:>9.3f} {fmt(cmds, '.4f'):>9} {fmt(calls, '.4f'):>9} {fmt(share, '.4f'):>17}  {ok}")
print()
print("medians over the runs")
for name in names:
    rows = table[name]
    med = lambda i: None if rows[0][i] is None else statistics.median(r[i] for r in rows)
    print(f"{name:<20} {med(0):>12.0f}/s  {med(1):.3f}x memory  commands/admitted {fmt(med(2), '.4f')}  script calls/admitted {fmt(med(3), '.4f')}  all ok: {all(r[6] for r in rows)}")
EOF
echo "logs: $OUT" >&2
