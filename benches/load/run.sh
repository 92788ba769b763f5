#!/usr/bin/env bash
# Load test over HTTPS keep-alive: `imagegate serve` against a bare actix-web + rustls server
# returning a fixed body (examples/bare_server.rs), same machine, same load, same client.
# Prints requests/s and p50/p99 latency for both, and imagegate's share of the bare throughput
# (target: at least 80 %).
#
#   benches/load/run.sh                 # defaults below
#   DURATION=30s CONNECTIONS=64 benches/load/run.sh
#
# Uses `oha` when installed (else `cargo install oha --locked`), or Debian's `wrk`.
set -euo pipefail

DURATION=${DURATION:-15s}          # long enough for a stable rate, short enough for CI
CONNECTIONS=${CONNECTIONS:-32}     # concurrent keep-alive connections
THREADS=${THREADS:-2}              # load generator threads (wrk)
IMAGEGATE_PORT=${IMAGEGATE_PORT:-18443}
BARE_PORT=${BARE_PORT:-18444}
BODY=${BODY:-tests/data/pod-create.json}

cd "$(dirname "$0")/../.."
root=$(pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

tool=${TOOL:-}
if [[ -z $tool ]]; then
    if command -v oha >/dev/null; then tool=oha
    elif command -v wrk >/dev/null; then tool=wrk
    else cargo install oha --locked; tool=oha
    fi
fi

cargo build --release --bin imagegate --example bare_server
bin=$root/target/release

"$bin/imagegate" serve --policies examples/policies --addr "127.0.0.1:$IMAGEGATE_PORT" \
    --metrics-addr off --cert-dir "$work/certs" --namespace-labels wh-test=env=prod \
    --log-format json >"$work/imagegate.out" 2>"$work/imagegate.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/certs/tls.key ]] && break; sleep 0.1; done
"$bin/examples/bare_server" "127.0.0.1:$BARE_PORT" "$work/certs/tls.crt" "$work/certs/tls.key" &
pids+=($!)
for port in "$IMAGEGATE_PORT" "$BARE_PORT"; do
    for _ in $(seq 100); do
        curl -s -o /dev/null --cacert "$work/certs/ca.crt" -X POST "https://127.0.0.1:$port/validate" -d '{}' && break
        sleep 0.1
    done
done

# One run: prints "RPS P50_MS P99_MS".
measure() {
    local url=$1
    case $tool in
    oha)
        oha --no-tui --insecure -z "$DURATION" -c "$CONNECTIONS" -m POST \
            -H 'Content-Type: application/json' -D "$BODY" --output-format json "$url" >"$work/oha.json"
        python3 - "$work/oha.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
print(f'{r["summary"]["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f}')
PY
        ;;
    wrk)
        cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("$root/$BODY", "rb")); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.3f %.3f\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA
        wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" -s "$work/post.lua" "$url" | awk '/^RESULT/ {print $2, $3, $4}'
        ;;
    *) echo "unknown TOOL $tool" >&2; exit 2 ;;
    esac
}

echo "tool: $tool, duration $DURATION, $CONNECTIONS connections, body $BODY ($(wc -c <"$BODY") bytes)"
read -r bare_rps bare_p50 bare_p99 < <(measure "https://127.0.0.1:$BARE_PORT/validate")
read -r ig_rps ig_p50 ig_p99 < <(measure "https://127.0.0.1:$IMAGEGATE_PORT/validate")
printf '%-10s %12s %10s %10s\n' server 'requests/s' 'p50 ms' 'p99 ms'
printf '%-10s %12s %10s %10s\n' bare "$bare_rps" "$bare_p50" "$bare_p99"
printf '%-10s %12s %10s %10s\n' imagegate "$ig_rps" "$ig_p50" "$ig_p99"
python3 -c "print(f'imagegate / bare: {$ig_rps / $bare_rps * 100:.1f} % of the requests/s (target >= 80 %)')"
