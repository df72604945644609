#!/bin/bash
# CPU and wall time of bench_dedupe on the eval halves for two checkouts, two rounds, alternating.
# Usage: benchmarks/ab_speed.sh NEW_CHECKOUT OLD_CHECKOUT   (e.g. from `git worktree add /tmp/sp-X X`)
# Prints one line per run: round, set, checkout, 1-min load, the matchkit table row, "CPU user sys".
set -u
here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 2 ] || { echo "usage: $0 NEW_CHECKOUT OLD_CHECKOUT" >&2; exit 2; }
cd /tmp
for round in 1 2; do for set in transformed hard; do for c in "$1" "$2"; do
  s=$( { /usr/bin/time -f "CPU %U %S" env PYTHONPATH="$c" "$here/../.venv/bin/python" "$here/bench_dedupe.py" \
        --set $set --split eval --methods matchkit --no-write 2>&1 | grep -E "^\| matchkit|^CPU" ; } 2>&1 )
  echo "$round $set $(basename "$c") load=$(cut -d' ' -f1 /proc/loadavg) $s" | tr '\n' ' '; echo
done; done; done
