#!/usr/bin/env bash
# Two `tollgate` binaries side by side on the gRPC port: Envoy RLS
# ShouldRateLimit on the memory store, driven by one client (the second
# binary's `tollgate bench grpc`, 64 workers, 1000 keys, a limit never
# reached), old then new in each pair. Prints each run's calls/s and the
# server's CPU per call (utime + stime over the run / calls), then the
# medians and the median of the per-pair ratios. 127.0.0.1 only; each run
# is bounded (DURATION, default 5s).
#
#   scripts/bench-grpc-ab.sh OLD_BIN NEW_BIN        # PAIRS=7 DURATION=5s
set -euo pipefail
OLD=${1:?usage: $0 OLD_BIN NEW_BIN}
NEW=${2:?usage: $0 OLD_BIN NEW_BIN}
PAIRS=${PAIRS:-7}
DURATION=${DURATION:-5s}
HTTP_PORT=${HTTP_PORT:-18180}
GRPC_PORT=${GRPC_PORT:-18181}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$(dirname "$0")/.."
# The same configuration as scripts/bench-server.sh.
source scripts/bench-server-config.sh
config "  kind: memory"
for pair in $(seq "$PAIRS"); do
  for side in old new; do
    bin=$OLD; [ "$side" = new ] && bin=$NEW
    RUST_LOG=error "$bin" serve --config "$WORK/tollgate.yaml" >/dev/null &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    "$NEW" bench grpc "127.0.0.1:$GRPC_PORT" --domain bench --descriptor-key client \
      --policy "gcra 1000000/1s" --keys 1000 --concurrency 64 --duration "$DURATION" \
      --json > "$WORK/out.json"
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    kill -TERM "$pid"; wait "$pid" || true
    python3 - "$side" "$pair" "$before" "$after" "$WORK/out.json" <<'PY' | tee -a "$WORK/results"
import json, os, sys
side, pair, before, after, path = sys.argv[1:]
r = json.load(open(path))
if r["errors"]:
    sys.exit(f"{side} pair {pair}: {r['errors']} errors: {r['error_samples']}")
cpu_us = (int(after) - int(before)) / os.sysconf("SC_CLK_TCK") * 1e6
print(f"{side} {pair} {r['throughput']:.0f} {cpu_us / r['requests']:.2f}")
PY
  done
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
old = [r for r in rows if r[0] == "old"]
new = [r for r in rows if r[0] == "new"]
med = statistics.median
print("calls/s median: old %.0f, new %.0f; new/old per pair: %s, median %.3f" % (
    med(float(r[2]) for r in old), med(float(r[2]) for r in new),
    " ".join("%.2f" % (float(n[2]) / float(o[2])) for o, n in zip(old, new)),
    med(float(n[2]) / float(o[2]) for o, n in zip(old, new))))
print("server CPU per call (us) median: old %.2f, new %.2f; new/old median %.3f" % (
    med(float(r[3]) for r in old), med(float(r[3]) for r in new),
    med(float(n[3]) / float(o[3]) for o, n in zip(old, new))))
PY
