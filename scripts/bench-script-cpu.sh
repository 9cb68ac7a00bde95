#!/usr/bin/env bash
# Redis CPU per decision of a decision script, as Redis itself counts it
# (INFO commandstats: usec_per_call of EVALSHA): the script of all six
# algorithms against the script a check of one algorithm runs, alternating,
# ROUNDS times each, for each algorithm in ALGORITHMS. One policy, a fresh
# key per call mostly (-r), consuming; a private redis-server on a free
# loopback port. Prints one line per run and the medians.
#
#   scripts/bench-script-cpu.sh            # ROUNDS=5 REQUESTS=200000
#   BASELINE=/tmp/old/decision_script scripts/bench-script-cpu.sh
#       # another build's example (e.g. the previous commit's) in place of
#       # the script of all six: its script of the same algorithm ("full"
#       # then names that one)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
REQUESTS=${REQUESTS:-200000}
ALGORITHMS=${ALGORITHMS:-"gcra fixed_window sliding_log"}
cargo build -q --release -p tollgate-redis --example decision_script
script=target/release/examples/decision_script
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/pid" >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
[ -z "${BASELINE:-}" ] && full=$(redis-cli -p "$port" SCRIPT LOAD "$($script)")
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for algorithm in $ALGORITHMS; do
  own=$(redis-cli -p "$port" SCRIPT LOAD "$($script "$algorithm")")
  [ -n "${BASELINE:-}" ] && full=$(redis-cli -p "$port" SCRIPT LOAD "$("$BASELINE" "$algorithm")")
  # limit 1000000000 per hour: every call allowed and charged (a write).
  case $algorithm in
    sliding_log) args=(1000000 3600000000 1000000 3600 1) ;;
    *) args=(1000000000 3600000000 1000000000 18 5) ;;
  esac
  for run in $(seq "$ROUNDS"); do
    for which in full own; do
      sha=${!which}
      # Every run starts from an empty Redis: no run pays for rehashing a
      # key space the one before grew, nor reads a state another wrote.
      redis-cli -p "$port" FLUSHALL >/dev/null
      redis-cli -p "$port" CONFIG RESETSTAT >/dev/null
      redis-benchmark -p "$port" -q -n "$REQUESTS" -c 20 -r 1000000 \
        EVALSHA "$sha" 1 "tollgate:{u__rand_int__}:$algorithm" 1 1 "" 1 "$algorithm" "${args[@]}" >/dev/null
      usec=$(redis-cli -p "$port" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p')
      echo "$algorithm $which $run $usec" | tee -a "$dir/runs"
    done
  done
  for which in full own; do
    echo "median $algorithm $which $(awk -v a="$algorithm" -v w="$which" '$1==a && $2==w {print $4}' "$dir/runs" | median) µs/call"
  done
done
