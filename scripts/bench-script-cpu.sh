#!/usr/bin/env bash
# Redis CPU per decision, as Redis itself counts it (INFO commandstats:
# usec_per_call), for every algorithm, next to the cheapest plain-command
# form of the same state change and to an empty call, in one run:
#
#   fcall    the production call: FCALL of the function library
#   evalsha  the fallback: EVALSHA of the script of that algorithm
#   floor    the plain commands a client would send for the same state
#            change (pipelined, one round trip), each run alone, their
#            usec_per_call summed (see FLOOR below)
#   empty    FCALL of a function that returns at once, with the same keys
#            and arguments: what entering Lua costs at all
#   bare     FCALL of a function that sends TIME and the floor's commands
#            with redis.call and returns five integers, deciding nothing:
#            bare - empty is what the commands cost from Lua, fcall - bare
#            what the decision's own Lua costs
#   probe    (not in the default FORMS) FCALL of a function that only
#            looks the key up in a hash of 100 000 overrides (HEXISTS):
#            probe - empty is what folding an override lookup into the
#            decision script would add (docs/OVERRIDES.md)
#
# One policy, a fresh key per call mostly (-r), consuming, never denied;
# a private redis-server on a free loopback port; 20 connections. Each
# round runs every form of every algorithm in turn; prints one line per
# measurement and the medians over ROUNDS.
#
#   scripts/bench-script-cpu.sh        # ROUNDS=3 REQUESTS=60000 (about 4 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-60000}
ALGORITHMS=${ALGORITHMS:-"fixed_window sliding_window sliding_log token_bucket gcra leaky_bucket"}
FORMS=${FORMS:-"fcall evalsha floor empty bare"}
cargo build -q --release -p tollgate-redis --example decision_script
script=target/release/examples/decision_script
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/pid" >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
cli() { redis-cli -p "$port" "$@"; }
library=$(cli FUNCTION LOAD "$($script --library)")
cli FUNCTION LOAD "#!lua name=bench_empty
redis.register_function('bench_empty', function() return 0 end)
redis.register_function('bench_bare_counter', function(k)
  redis.call('TIME'); redis.call('INCRBY', k[1], '1'); redis.call('PEXPIRE', k[1], '3600000')
  return {1, 0, 0, 0, 0}
end)
redis.register_function('bench_bare_window', function(k)
  redis.call('TIME'); redis.call('GET', k[1] .. ':prev'); redis.call('INCRBY', k[1], '1')
  redis.call('PEXPIRE', k[1], '3600000')
  return {1, 0, 0, 0, 0}
end)
redis.register_function('bench_bare_log', function(k)
  redis.call('TIME'); redis.call('ZREMRANGEBYSCORE', k[1], '-inf', '1000'); redis.call('ZCARD', k[1])
  redis.call('ZADD', k[1], '1790000000000000', '1:1'); redis.call('PEXPIRE', k[1], '3600000')
  return {1, 0, 0, 0, 0}
end)
redis.register_function('bench_probe', function(k)
  redis.call('HEXISTS', 'tollgate:{%overrides}', k[1])
  return 0
end)
redis.register_function('bench_bare_value', function(k)
  redis.call('TIME'); redis.call('GET', k[1]); redis.call('SET', k[1], '1790000000000000', 'PX', '3600000')
  return {1, 0, 0, 0, 0}
end)" >/dev/null
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
bench() { redis-benchmark -p "$port" -q -n "$REQUESTS" -c 20 -r 1000000 "$@" >/dev/null; }
# usec_per_call of each command in `INFO commandstats`, summed.
usec() {
  cli INFO commandstats | tr -d '\r' | awk -F'[:,=]' -v want=" $* " '
    { sub(/^cmdstat_/, "", $1) }
    index(want, " " $1 " ") { for (i = 2; i < NF; i++) if ($i == "usec_per_call") s += $(i + 1) }
    END { printf "%.2f\n", s }'
}
key() { echo "tollgate:{u__rand_int__}:$1"; }
# FLOOR: the cheapest plain commands that make the same state change, each
# on the same keys as the decision; the first word of each line is the
# commandstats name.
floor() {
  local k; k=$(key "$1")
  case $1 in
    # A counter per window and its expiry (what Limitador sends).
    fixed_window) printf '%s\n' "incrby INCRBY $k 1" "pexpire PEXPIRE $k 3600000" ;;
    # The previous window's count, and the current one's counter.
    sliding_window) printf '%s\n' "get GET $k:prev" "incrby INCRBY $k 1" "pexpire PEXPIRE $k 3600000" ;;
    # Drop what expired, count the rest, add this one, expire: a log
    # cannot decide without its count (ZCARD).
    sliding_log) printf '%s\n' "zremrangebyscore ZREMRANGEBYSCORE $k -inf 1000" "zcard ZCARD $k" \
      "zadd ZADD $k __rand_int__ __rand_int__" "pexpire PEXPIRE $k 3600000" ;;
    # Read one value, write it back with its expiry.
    *) printf '%s\n' "get GET $k" "set SET $k 1790000000000000 PX 3600000" ;;
  esac
}
for run in $(seq "$ROUNDS"); do
  for algorithm in $ALGORITHMS; do
    # Policies that never deny: every call allowed and charged (a write).
    case $algorithm in
      sliding_log) policy="sliding_log 1000000/1h" ;;
      sliding_window) policy="sliding_window 1000000000/1s" ;; # exact: 3 x limit x period < 2^53 µs
      *) policy="$algorithm 1000000000/1h" ;;
    esac
    policy=$($script --policy "$policy")
    # KEYS and ARGV as the store sends them (main.lua).
    call=(1 "$(key "$algorithm")" 1 1 "" "$policy")
    for form in $FORMS; do
      cli FLUSHALL >/dev/null
      cli CONFIG RESETSTAT >/dev/null
      case $form in
        fcall) bench FCALL "$library" "${call[@]}"; stat=fcall ;;
        evalsha)
          sha=$(cli SCRIPT LOAD "$($script "$algorithm")")
          bench EVALSHA "$sha" "${call[@]}"; stat=evalsha ;;
        empty) bench FCALL bench_empty "${call[@]}"; stat=fcall ;;
        probe)
          cli EVAL "for i = 1, 100000 do redis.call('HSET', KEYS[1], 'tenant-' .. i, 'p 0 gcra 10 1000000 10') end" \
            1 'tollgate:{%overrides}' >/dev/null
          cli CONFIG RESETSTAT >/dev/null
          bench FCALL bench_probe "${call[@]}"; stat=fcall ;;
        bare)
          case $algorithm in
            fixed_window) bare=counter ;; sliding_window) bare=window ;;
            sliding_log) bare=log ;; *) bare=value ;;
          esac
          bench FCALL "bench_bare_$bare" "${call[@]}"; stat=fcall ;;
        floor)
          stat=
          while read -r name command; do
            # shellcheck disable=SC2086 # the words of one command
            bench $command
            stat="$stat $name"
          done < <(floor "$algorithm") ;;
      esac
      # shellcheck disable=SC2086
      echo "$algorithm $form $run $(usec $stat)" | tee -a "$dir/runs"
    done
  done
done
echo
printf '%-15s' algorithm; for form in $FORMS; do printf '%9s' "$form"; done; echo "  fcall/floor  (µs/call, medians of $ROUNDS)"
for algorithm in $ALGORITHMS; do
  printf '%-15s' "$algorithm"
  for form in $FORMS; do
    m=$(awk -v a="$algorithm" -v f="$form" '$1==a && $2==f {print $4}' "$dir/runs" | median)
    printf '%9s' "$m"
    eval "m_$form=$m"
  done
  if [[ -n ${m_fcall:-} && -n ${m_floor:-} ]]; then
    awk -v a="$m_fcall" -v b="$m_floor" 'BEGIN {printf "  %.2fx", a / b}'
  fi
  echo
done
