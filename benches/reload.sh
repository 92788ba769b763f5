#!/usr/bin/env bash
# Resident memory of `imagegate serve` (release build) holding generated policies, and its peak
# across a reload. For each size (POLICIESxPATTERNS, the policies of
# benches/support/generated.rs written one per file by examples/generate_policies.rs):
#
#   start     seconds from starting the process to its URL being printed (policies read and
#             compiled, sockets bound)
#   idle      VmRSS once started
#   steady    VmRSS after LOAD seconds of POST /validate (tests/data/pod-create.json, the
#             namespace labelled so that one generated policy applies), still under load
#   peak      VmHWM across a reload: the peak is reset (/proc/PID/clear_refs), one policy file is
#             edited while the load goes on, and the peak is read once the new set is in force
#   ratio     peak / steady (target: at most 1.25)
#   reload    seconds from the edit to the "policies loaded" line, less the reload debounce
#   after     VmRSS a second after the reload
#
#   benches/reload.sh                               # every size
#   SIZES="1000x100 10000x100" LOAD=10 benches/reload.sh
#
# Decision records are turned off (RUST_LOG), so that a run does not write gigabytes of them:
# what is measured is the policies' memory. The load needs wrk (`apt-get install wrk`); without
# it, only the idle memory and the reload without load are measured.
set -euo pipefail

SIZES=${SIZES:-"100x3 1000x3 10000x3 100x100 1000x100 10000x100"}
LOAD=${LOAD:-5}                  # seconds of load before the steady state is read
CONNECTIONS=${CONNECTIONS:-16}   # keep-alive connections of the load
DEBOUNCE_MS=250                  # serve's RELOAD_DEBOUNCE (src/cli/serve.rs)
FIXTURE=tests/data/pod-create.json

cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid= load_pid=
cleanup() {
    for p in $load_pid $pid; do kill "$p" 2>/dev/null || true; done
    for p in $load_pid $pid; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
# A failing step says which (curl -s and grep -c fail silently otherwise).
trap 'echo "benches/reload.sh: line $LINENO failed (exit $?)" >&2' ERR

cargo build --release --bin imagegate --example generate_policies
bin=${CARGO_TARGET_DIR:-target}/release
have_wrk=$(command -v wrk >/dev/null && echo yes || echo no)
[[ $have_wrk == yes ]] || echo "wrk not found: measuring without load" >&2
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("$FIXTURE", "rb")); wrk.body = f:read("*a"); f:close()
LUA

# A field of /proc/PID/status, in MiB.
mem() { awk -v k="$2:" '$1 == k {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
now() { date +%s.%N; }
load() { # DURATION URL: POST /validate in the background
    if [[ $have_wrk == yes ]]; then
        wrk -t 2 -c "$CONNECTIONS" -d "$1" -s "$work/post.lua" "$2" >/dev/null &
        load_pid=$!
    fi
}

printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' policies 'patterns each' patterns \
    'policy files' start idle steady 'peak across a reload' ratio reload after
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for size in $SIZES; do
    n=${size%x*} per=${size#*x}
    policies=$work/policies-$size
    "$bin/examples/generate_policies" "$policies" "$n" "$per"
    files=$(du -sm "$policies" | cut -f1)

    started=$(now)
    RUST_LOG=info,imagegate::decision=off "$bin/imagegate" serve --policies "$policies" \
        --addr 127.0.0.1:0 --metrics-addr off --cert-dir "$work/certs" \
        --namespace-labels wh-test=team=t7 >"$work/out" 2>"$work/log" &
    pid=$!
    until grep -q '/validate' "$work/out" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
        sleep 0.05
    done
    start=$(python3 -c "print(f'{$(now) - $started:.2f}')")
    url=$(grep -o 'https://[^ ]*/validate' "$work/out")
    answer=$(curl -sf --cacert "$work/certs/ca.crt" -H 'Content-Type: application/json' \
        --data-binary "@$FIXTURE" "$url")
    [[ $answer == *'"allowed":'* ]] || { echo "unexpected answer: $answer" >&2; exit 1; }
    sleep 1
    idle=$(mem "$pid" VmRSS)

    load "$((LOAD + 30))s" "$url"
    sleep "$LOAD"
    steady=$(mem "$pid" VmRSS)
    echo 5 >"/proc/$pid/clear_refs" # VmHWM := VmRSS
    loaded=$(grep -c 'policies loaded' "$work/log")
    edited=$(now)
    all=("$policies"/*)
    sed -i 's#/\*\*$#/*#; t; s#/\*$#/**#' "${all[0]}" # patterns of one policy change
    until [[ $(grep -c 'policies loaded' "$work/log") -gt $loaded ]]; do
        grep -q 'reload failed' "$work/log" && { cat "$work/log" >&2; exit 1; }
        sleep 0.02
    done
    reload=$(python3 -c "print(f'{$(now) - $edited - $DEBOUNCE_MS / 1000:.2f}')")
    sleep 1
    peak=$(mem "$pid" VmHWM)
    after=$(mem "$pid" VmRSS)
    if [[ -n $load_pid ]]; then kill "$load_pid"; wait "$load_pid" 2>/dev/null || true; load_pid=; fi
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    rm -rf "$policies"

    ratio=$(python3 -c "print(f'{$peak / $steady:.2f}')")
    printf '| %s | %s | %s | %s MB | %s s | %s MiB | %s MiB | %s MiB | %s | %s s | %s MiB |\n' \
        "$n" "$per" "$((n * (per <= 3 ? 3 : 100)))" "$files" "$start" "$idle" "$steady" "$peak" \
        "$ratio" "$reload" "$after"
done
