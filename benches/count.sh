#!/usr/bin/env bash
# Instructions per request for each step of `POST /validate` (examples/validate_steps.rs), counted
# by valgrind's cachegrind: the difference between 1,200 and 200 runs of a step, divided by 1,000,
# so that start-up (loading and compiling the policies) cancels out. Unlike timings, the counts
# do not move with the load of a shared machine, so they show a change of a few percent.
#
#   benches/count.sh                    # every step, admitted and denied
#   benches/count.sh read denied-all    # some steps
#   benches/count.sh mutate all         # POST /mutate beside POST /validate
#
# Needs valgrind (`apt-get install valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
if [[ ${#steps[@]} -eq 0 ]]; then
    for s in read decide answer record metrics all; do steps+=("$s" "denied-$s"); done
fi
cargo build --release --example validate_steps
bin=${CARGO_TARGET_DIR:-target}/release/examples/validate_steps
count() {
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
        | awk '/I *refs/ {gsub(",", "", $4); print $4}'
}
printf '%-16s %14s\n' step 'instructions'
for step in "${steps[@]}"; do
    few=$(count "$step" 200)
    many=$(count "$step" 1200)
    printf '%-16s %14s\n' "$step" $(((many - few) / 1000))
done
