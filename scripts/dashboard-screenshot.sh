#!/usr/bin/env bash
# Makes docs/img/dashboard.png: a real `tollgate serve` (memory store) on a
# free loopback port, two minutes of traffic with some denials (three
# policies, a handful of keys, one of them hammered), then, while the
# traffic goes on, Debian's headless chromium takes a 1280x900 screenshot
# of http://<server>/.
#
#   scripts/dashboard-screenshot.sh            # needs chromium, python3
#   OUT=/tmp/dash.png SECONDS_OF_TRAFFIC=20 scripts/dashboard-screenshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-docs/img/dashboard.png}
SECONDS_OF_TRAFFIC=${SECONDS_OF_TRAFFIC:-120}
CHROMIUM=${TOLLGATE_CHROMIUM:-chromium}
command -v "$CHROMIUM" >/dev/null || { echo "no chromium: apt-get install chromium" >&2; exit 1; }
command -v python3 >/dev/null || { echo "no python3: apt-get install python3" >&2; exit 1; }

cargo build -p tollgate-cli >&2   # a debug build is plenty for this traffic
WORK=$(mktemp -d)
SERVER=""
TRAFFIC=""
cleanup() {
  for pid in $TRAFFIC $SERVER; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/tollgate.yaml" <<'YAML'
server:
  dashboard:
    show_keys: true
policies:
  - name: api
    algorithm: sliding_window
    limit: 40
    period: 1s
  - name: login
    algorithm: token_bucket
    limit: 5
    period: 1m
    burst: 5
  - name: search
    algorithm: gcra
    limit: 10
    period: 1s
    burst: 20
YAML

target/debug/tollgate serve --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
  --config "$WORK/tollgate.yaml" > "$WORK/banner" 2> "$WORK/log" &
SERVER=$!
for _ in $(seq 100); do
  ADDRESS=$(sed -n 's|^ *HTTP   http://\([0-9.:]*\).*|\1|p' "$WORK/banner")
  [ -n "$ADDRESS" ] && break
  sleep 0.1
done
[ -n "$ADDRESS" ] || { echo "tollgate serve did not start:" >&2; cat "$WORK/log" >&2; exit 1; }
echo "== tollgate serve on $ADDRESS; $SECONDS_OF_TRAFFIC s of traffic" >&2

# Bounded traffic (10 s longer than the wait below, so that the page shows
# it still flowing): each second, a varying load on three policies; the
# key `batch-job` goes over `api` at its peaks, and `scraper-7` hammers
# `login` and `search`.
python3 - "$ADDRESS" "$((SECONDS_OF_TRAFFIC + 10))" > "$WORK/traffic.log" 2>&1 <<'PY' &
import http.client, json, math, sys, time
address, seconds = sys.argv[1], int(sys.argv[2])
host, port = address.rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=5)
def check(policy, key):
    body = json.dumps({"policy": policy, "key": key})
    connection.request("POST", "/v1/check", body, {"content-type": "application/json"})
    connection.getresponse().read()
start = time.monotonic()
for second in range(seconds):
    wave = 1 + math.sin(second / 6)
    for i in range(int(20 + 15 * wave)):
        check("api", f"user-{i % 9}")
    for i in range(int(28 * wave)):
        check("api", "batch-job")
    for i in range(3):
        check("login", f"user-{second % 4}")
    for i in range(4 + int(4 * wave)):
        check("login", "scraper-7")
    for i in range(8 + int(10 * wave)):
        check("search", f"user-{i % 5}")
    for i in range(int(12 * wave)):
        check("search", "scraper-7")
    time.sleep(max(0.0, start + second + 1 - time.monotonic()))
PY
TRAFFIC=$!
sleep "$SECONDS_OF_TRAFFIC"

"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$WORK/profile" --window-size=1280,900 \
  --virtual-time-budget=3000 --screenshot="$OUT" "http://$ADDRESS/" 2> "$WORK/chromium.log" \
  || { cat "$WORK/chromium.log" >&2; exit 1; }
wait "$TRAFFIC" || { echo "the traffic failed:" >&2; cat "$WORK/traffic.log" >&2; exit 1; }
TRAFFIC=""
echo "== $OUT: $(stat -c %s "$OUT") bytes" >&2
