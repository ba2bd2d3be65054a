#!/usr/bin/env bash
# Scale benchmark (issue 8): a documented script, run by hand.
#
#   cargo build --release && bash benches/scale.sh [SIZES...]     # default: 10000 100000 1000000
#
# For each size N it prints one table row:
#   - bulk `enqueue --file` of N lines ({"command":"true","delay":86400}, so nothing runs):
#     wall time and the peak RSS of the process;
#   - `status`, `list --limit 50` and `show ID` latency (median of 7 runs), without and with a
#     supervisor (4 workers) running;
#   - the supervisor's RSS after the bulk enqueue went through it;
#   - `export --sqlite` time without a supervisor;
#   - disk use of the data directory.
# and, for the smallest size only, the drain rate of N `true` jobs with 4 workers.
# The data directories live under $QUEUECTL_BENCH_DIR (default: target/scale-bench); keep them
# off tmpfs. On a busy machine the wall times are noisy: the CPU columns are the steadier ones.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUEUECTL:-$PWD/target/release/queuectl}
BASE=${QUEUECTL_BENCH_DIR:-$PWD/target/scale-bench}
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(10000 100000 1000000)
mkdir -p "$BASE"

lines() { awk -v n="$1" -v l="$2" 'BEGIN { for (i = 0; i < n; i++) print l }'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Median wall time in ms of 7 runs of a command.
lat() { for _ in 1 2 3 4 5 6 7; do
          s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))
        done | median; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

printf '%-8s %-12s %-10s | %-8s %-8s %-8s | %-8s %-8s %-8s %-10s | %-8s %-8s\n' \
  N enqueue_s enq_rss_MB status_ms list_ms show_ms sup_st_ms sup_li_ms sup_sh_ms sup_rss_MB export_s disk_MB
for n in "${SIZES[@]}"; do
  d="$BASE/n$n"; rm -rf "$d"; f="$BASE/jobs-$n.jsonl"
  [ -f "$f" ] || lines "$n" '{"command":"true","delay":86400}' > "$f"
  /usr/bin/time -o "$BASE/time" -f '%e %M' "$Q" --data-dir "$d" enqueue --file "$f" >/dev/null 2>&1
  t=$(tail -1 "$BASE/time"); enq_s=${t% *}; enq_mb=$(( ${t#* } / 1024 ))
  id=$("$Q" --data-dir "$d" list --state pending --limit 1 --json | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | sed -n 1p)
  st=$(lat "$Q" --data-dir "$d" status); li=$(lat "$Q" --data-dir "$d" list --limit 50); sh=$(lat "$Q" --data-dir "$d" show "$id")
  s=$(date +%s%N); "$Q" --data-dir "$d" export --sqlite "$BASE/n$n.db" --force >/dev/null 2>&1; e=$(date +%s%N)
  exp_s=$(awk -v ns=$(( e - s )) 'BEGIN {printf "%.2f", ns / 1e9}')
  disk=$(du -sm "$d" | cut -f1)
  "$Q" --data-dir "$d" worker start --count 4 >/dev/null
  pid=$("$Q" --data-dir "$d" status --json | sed -n 's/.*"supervisor_pid": *\([0-9]*\).*/\1/p')
  "$Q" --data-dir "$d" enqueue --file "$f" >/dev/null 2>&1   # through the supervisor: N more
  sst=$(lat "$Q" --data-dir "$d" status); sli=$(lat "$Q" --data-dir "$d" list --limit 50); ssh=$(lat "$Q" --data-dir "$d" show "$id")
  srss=$(( $(rss_kb "$pid") / 1024 ))
  "$Q" --data-dir "$d" worker stop >/dev/null
  printf '%-8s %-12s %-10s | %-8s %-8s %-8s | %-8s %-8s %-8s %-10s | %-8s %-8s\n' \
    "$n" "$enq_s" "$enq_mb" "$st" "$li" "$sh" "$sst" "$sli" "$ssh" "$srss" "$exp_s" "$disk"
done

# Drain rate: N `true` jobs, 4 workers, from start to the last completion.
n=${SIZES[0]}; d="$BASE/drain$n"; rm -rf "$d"
lines "$n" '{"command":"true"}' | "$Q" --data-dir "$d" enqueue --file - >/dev/null 2>&1
s=$(date +%s%N); "$Q" --data-dir "$d" worker start --count 4 >/dev/null
until [ "$("$Q" --data-dir "$d" status --json | sed -n 's/.*"completed": *\([0-9]*\).*/\1/p')" = "$n" ]; do sleep 0.2; done
e=$(date +%s%N); "$Q" --data-dir "$d" worker stop >/dev/null
echo "drain: $n true jobs with 4 workers: $(awk -v n=$n -v ns=$(( e - s )) 'BEGIN {printf "%.0f jobs/s", n / (ns / 1e9)}')"
