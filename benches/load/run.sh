#!/usr/bin/env bash
# Load test over HTTPS keep-alive: `imagegate serve` against a bare actix-web + rustls server
# (examples/bare_server.rs) that answers every request with a fixed body: the very bytes
# imagegate answers for the same request, so both send the same response and the difference
# is imagegate's own work (reading the AdmissionReview, deciding, writing the answer, the
# decision record and metrics). Same machine, same load, same client, three scenarios:
#
#   admitted  tests/data/pod-create.json as captured (namespace wh-test: only the Warn-mode
#             example policy applies, and it has nothing to say), to POST /validate
#   denied    the same Pod in namespace shop-prod (env=prod): the production policy denies it
#             with four violations
#   mutated   the captured Pod to POST /mutate of a second imagegate, which has the example
#             policies and one more with setPullPolicyAlways: the answer is a JSONPatch of four
#             operations (the first imagegate, measured by the other two, has no such policy)
#
# Each scenario runs ROUNDS rounds, the bare server then imagegate in each, so that a slow spell
# of the machine touches both. Prints, per round, requests/s, p50/p99 latency and the server's
# CPU time per request (from /proc/PID/schedstat, so it does not count the load generator), then
# the median of imagegate's share of the bare throughput (target: at least 80 %) and of the CPU
# time per request of both.
#
#   benches/load/run.sh                 # defaults below
#   DURATION=30s CONNECTIONS=64 ROUNDS=5 benches/load/run.sh
#
# Uses `oha` when installed, else Debian's `wrk` (`apt-get install wrk`), else installs oha.
set -euo pipefail

DURATION=${DURATION:-10s}          # long enough for a stable rate, short enough to run often
CONNECTIONS=${CONNECTIONS:-32}     # concurrent keep-alive connections
THREADS=${THREADS:-2}              # load generator threads (wrk)
ROUNDS=${ROUNDS:-3}                # alternating rounds per scenario; the median is reported
IMAGEGATE_PORT=${IMAGEGATE_PORT:-18443}
BARE_PORT=${BARE_PORT:-18444}
MUTATE_PORT=${MUTATE_PORT:-18445}
SCENARIOS=${SCENARIOS:-admitted denied mutated}
FIXTURE=tests/data/pod-create.json

cd "$(dirname "$0")/../.."
root=$(pwd)
work=$(mktemp -d)
pids=()
bare_pid=
cleanup() {
    for pid in "${pids[@]}" $bare_pid; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" $bare_pid; do wait "$pid" 2>/dev/null || true; done
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
    --metrics-addr off --cert-dir "$work/certs" --namespace-labels shop-prod=env=prod \
    --log-format json >"$work/imagegate.out" 2>>"$work/imagegate.log" &
pids+=($!)
ready() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null --cacert "$work/certs/ca.crt" "https://127.0.0.1:$1/readyz" && return
        sleep 0.1
    done
}
ready "$IMAGEGATE_PORT"
# The second one reuses the first one's certificates.
mkdir "$work/mutate-policies"
cat >"$work/mutate-policies/always-pull.yaml" <<'YAML'
apiVersion: imagegate.dev/v1alpha1
kind: ImagePolicy
metadata:
  name: always-pull
spec:
  setPullPolicyAlways: true
YAML
"$bin/imagegate" serve --policies examples/policies --policies "$work/mutate-policies" \
    --addr "127.0.0.1:$MUTATE_PORT" --metrics-addr off --cert-dir "$work/certs" \
    --log-format json >"$work/imagegate-mutate.out" 2>>"$work/imagegate.log" &
pids+=($!)
ready "$MUTATE_PORT"

cp "$FIXTURE" "$work/admitted.json"
cp "$FIXTURE" "$work/mutated.json"
sed 's/"namespace": *"wh-test"/"namespace":"shop-prod"/g' "$FIXTURE" >"$work/denied.json"

# The CPU time (ns) the process has used, all threads; 0 where schedstat is not available.
cpu_ns() {
    local total=0 t
    for t in /proc/"$1"/task/*/schedstat; do
        read -r ns _ 2>/dev/null <"$t" && total=$((total + ns))
    done
    echo "$total"
}

# One run against PID's server at URL: prints "RPS P50_MS P99_MS CPU_US_PER_REQUEST".
measure() {
    local url=$1 pid=$2 before after
    before=$(cpu_ns "$pid")
    case $tool in
    oha)
        oha --no-tui --insecure -z "$DURATION" -c "$CONNECTIONS" -m POST \
            -H 'Content-Type: application/json' -D "$BODY" --output-format json "$url" >"$work/oha.json"
        python3 - "$work/oha.json" <<'PY' >"$work/run"
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
print(f'{r["summary"]["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {r["summary"]["requestsPerSec"] * r["summary"]["total"]:.0f}')
PY
        ;;
    wrk)
        cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("$BODY", "rb")); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.3f %.3f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests))
end
LUA
        wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" -s "$work/post.lua" "$url" \
            | awk '/^RESULT/ {print $2, $3, $4, $5}' >"$work/run"
        ;;
    *) echo "unknown TOOL $tool" >&2; exit 2 ;;
    esac
    after=$(cpu_ns "$pid")
    local rps p50 p99 requests
    read -r rps p50 p99 requests <"$work/run"
    python3 -c "print('$rps $p50 $p99', f'{($after - $before) / 1000 / max($requests, 1):.1f}' if $after > 0 else '-')"
}

records=0
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

echo "tool: $tool, $ROUNDS rounds of $DURATION per server, $CONNECTIONS connections, body $FIXTURE ($(wc -c <"$FIXTURE") bytes)"
printf '%-10s %5s %-10s %12s %10s %10s %14s %8s\n' scenario round server 'requests/s' 'p50 ms' 'p99 ms' 'CPU µs/req' 'answer'
for scenario in $SCENARIOS; do
    export BODY=$work/$scenario.json
    answer=$work/$scenario.answer
    case $scenario in
    admitted) url=https://127.0.0.1:$IMAGEGATE_PORT/validate pid=${pids[0]} expect='"allowed":true' ;;
    denied) url=https://127.0.0.1:$IMAGEGATE_PORT/validate pid=${pids[0]} expect='"allowed":false' ;;
    mutated) url=https://127.0.0.1:$MUTATE_PORT/mutate pid=${pids[1]} expect='"patchType":"JSONPatch"' ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    curl -sf --cacert "$work/certs/ca.crt" -H 'Content-Type: application/json' \
        --data-binary "@$BODY" "$url" >"$answer"
    grep -q "$expect" "$answer" \
        || { echo "unexpected answer for $scenario: $(cat "$answer")" >&2; exit 1; }
    "$bin/examples/bare_server" "127.0.0.1:$BARE_PORT" "$work/certs/tls.crt" "$work/certs/tls.key" "$answer" &
    bare_pid=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null --cacert "$work/certs/ca.crt" -X POST "https://127.0.0.1:$BARE_PORT/validate" -d '{}' && break
        sleep 0.1
    done
    size=$(wc -c <"$answer")
    shares=() bare_cpus=() ig_cpus=()
    for round in $(seq "$ROUNDS"); do
        read -r bare_rps bare_p50 bare_p99 bare_cpu < <(measure "https://127.0.0.1:$BARE_PORT/validate" "$bare_pid")
        read -r ig_rps ig_p50 ig_p99 ig_cpu < <(measure "$url" "$pid")
        # The records of a run are gigabytes: count them, then empty the file (opened for
        # appending, so imagegate goes on writing at its new end).
        records=$((records + $(grep -c imagegate::decision "$work/imagegate.log" || true)))
        : >"$work/imagegate.log"
        printf '%-10s %5s %-10s %12s %10s %10s %14s %8s\n' "$scenario" "$round" bare "$bare_rps" "$bare_p50" "$bare_p99" "$bare_cpu" "$size B"
        printf '%-10s %5s %-10s %12s %10s %10s %14s %8s\n' "$scenario" "$round" imagegate "$ig_rps" "$ig_p50" "$ig_p99" "$ig_cpu" "$size B"
        shares+=("$(python3 -c "print(f'{$ig_rps / $bare_rps * 100:.1f}')")")
        bare_cpus+=("$bare_cpu") ig_cpus+=("$ig_cpu")
    done
    kill "$bare_pid"; wait "$bare_pid" 2>/dev/null || true; bare_pid=
    echo "$scenario: imagegate / bare: $(median "${shares[@]}") % of the requests/s, median of ${shares[*]} (target >= 80 %)"
    if [[ ${ig_cpus[0]} != - ]]; then
        echo "$scenario: server CPU per request, median: bare $(median "${bare_cpus[@]}") µs, imagegate $(median "${ig_cpus[@]}") µs"
    fi
done
echo "decision and mutation records written: $((records + $(grep -c imagegate::decision "$work/imagegate.log" || true)))"
