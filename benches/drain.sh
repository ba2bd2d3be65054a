#!/usr/bin/env bash
# Drain rate of a given store: a documented script, run by hand.
#
#   bash benches/drain.sh BINARY [STORE] [ROUNDS]
#
# Copies the data directory STORE (or starts from an empty one) to target/drain-bench, starts a
# supervisor with 4 workers paused, then ROUNDS times (default 3): resumes it and measures how
# fast 1,000 jobs complete (polling `status` every 50 ms), pausing again after. With no STORE,
# each round first enqueues 1,000 `true` jobs. Prints the rates (jobs/s) and the supervisor's
# RSS. Run it alternately on two stores (or two binaries) to compare them in one session.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=$1; SRC=${2:-}; R=${3:-3}
d=${QUEUECTL_BENCH_DIR:-$PWD/target}/drain-bench
rm -rf "$d"; mkdir -p "$(dirname "$d")"
if [ -n "$SRC" ]; then cp -a "$SRC" "$d"; fi
"$Q" --data-dir "$d" worker start --count 4 >/dev/null 2>&1
trap '"$Q" --data-dir "$d" worker stop >/dev/null 2>&1 || true; rm -rf "$d"' EXIT
"$Q" --data-dir "$d" worker pause >/dev/null
pid=$("$Q" --data-dir "$d" status --json | sed -n 's/.*"supervisor_pid": *\([0-9]*\).*/\1/p')
completed() { "$Q" --data-dir "$d" status --json | sed -n 's/.*"completed": *\([0-9]*\).*/\1/p'; }
out=""
for _ in $(seq "$R"); do
  if [ -z "$SRC" ]; then
    awk 'BEGIN { for (i = 0; i < 1000; i++) print "{\"command\":\"true\"}" }' |
      "$Q" --data-dir "$d" enqueue --file - >/dev/null 2>&1
  fi
  c0=$(completed); s=$(date +%s%N); "$Q" --data-dir "$d" worker resume >/dev/null
  until [ "$(completed)" -ge $(( c0 + 1000 )) ]; do sleep 0.05; done
  out="$out $(awk -v ns=$(( $(date +%s%N) - s )) 'BEGIN { printf "%.0f", 1000 / (ns / 1e9) }')"
  "$Q" --data-dir "$d" worker pause >/dev/null
done
echo "${SRC:-empty store, 1,000 jobs enqueued per round}:$out jobs/s; supervisor RSS $(awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$pid/status") MiB"
