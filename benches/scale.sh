#!/usr/bin/env bash
# Scale benchmark: a documented script, run by hand (about 5 minutes on a 2-core machine for the
# default sizes, most of it the million-job bulk enqueues).
#
#   cargo build --release && bash benches/scale.sh [SIZES...]     # default: 10000 100000 1000000
#
# It prints a Markdown table, one row per size N, every figure of one row from the same store:
#   - enqueue: bulk `enqueue --file` of N lines {"command":"true"} with no supervisor: wall time
#     and the peak RSS of the process (GNU time's %M);
#   - direct: `status`, `list --limit 50` and `show ID` with no supervisor, median of 7 runs (ms);
#   - supervisor: the same three with a supervisor (4 workers, paused so the queue stays N) running;
#   - export: `export --sqlite` of the N jobs without, then with the supervisor running (s);
#   - RSS of a supervisor holding N jobs (MiB): started on the store of the first enqueue; and
#     one started on an empty store, after the N-line file went through it (the bulk enqueue
#     with a supervisor running; its wall time is in the same column);
#   - disk: the data directory after the first enqueue (MiB), and per million jobs.
# Then the drain rate of `true` jobs with 4 workers: the supervisor is resumed with 1,000 queued,
# and with 1,000,000 queued (the largest size's store; when smaller than that, its N), and the
# time for 1,000 jobs to complete is measured from the resume (polling `status` every 50 ms);
# three drains at each size, one after the other, the median of each and their ratio.
#
# Environment: QUEUECTL (the binary, default target/release/queuectl), QUEUECTL_BENCH_DIR (the
# data directories, default target/scale-bench; keep them off tmpfs). Each size's directory is
# removed when its row is done. On a busy machine wall times are noisy: say so beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QUEUECTL:-$PWD/target/release/queuectl}
BASE=${QUEUECTL_BENCH_DIR:-$PWD/target/scale-bench}
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(10000 100000 1000000)
DRAIN=1000
mkdir -p "$BASE"

lines() { awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) print "{\"command\":\"true\"}" }'; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
secs_since() { awk -v ns=$(( $(date +%s%N) - $1 )) 'BEGIN { printf "%.2f", ns / 1e9 }'; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# Median wall time (ms) of 7 runs of a command.
lat() { for _ in 1 2 3 4 5 6 7; do
          s=$(date +%s%N); "$@" >/dev/null 2>&1; ms_since "$s"
        done | median; }
rss_mib() { awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }
completed() { "$Q" --data-dir "$1" status --json | sed -n 's/.*"completed": *\([0-9]*\).*/\1/p'; }
sup_pid() { "$Q" --data-dir "$1" status --json | sed -n 's/.*"supervisor_pid": *\([0-9]*\).*/\1/p'; }
# Resumes the paused supervisor of $1; prints the rate (jobs/s) at which $DRAIN jobs complete.
drain_once() {
  local d=$1 c0 s
  c0=$(completed "$d")
  s=$(date +%s%N)
  "$Q" --data-dir "$d" worker resume >/dev/null
  until [ "$(completed "$d")" -ge $(( c0 + DRAIN )) ]; do sleep 0.05; done
  awk -v n=$DRAIN -v ns=$(( $(date +%s%N) - s )) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
  "$Q" --data-dir "$d" worker pause >/dev/null
}
# Three drains of $DRAIN jobs from the paused supervisor of $1 (each after running `$2`, which
# tops the queue up when it is the small one); prints "median (all three)".
drain() {
  local rates=() r
  for _ in 1 2 3; do
    [ -n "${2:-}" ] && $2
    rates+=("$(drain_once "$1")")
  done
  r=$(printf '%s\n' "${rates[@]}" | median)
  echo "$r (${rates[*]})"
}
start_paused() { "$Q" --data-dir "$1" worker start --count 4 >/dev/null; "$Q" --data-dir "$1" worker pause >/dev/null; }

echo "| jobs | bulk enqueue | its peak RSS | status / list 50 / show, direct | the same, supervisor running | export direct / supervisor running | supervisor RSS holding N: started on them / after they went through it (that enqueue's time) | disk (per million) |"
echo "|---|---|---|---|---|---|---|---|"
largest=0; rate_large=""
for n in "${SIZES[@]}"; do
  d="$BASE/n$n"; rm -rf "$d"; f="$BASE/jobs-$n.jsonl"
  [ -f "$f" ] || lines "$n" > "$f"
  /usr/bin/time -o "$BASE/time" -f '%e %M' "$Q" --data-dir "$d" enqueue --file "$f" >/dev/null 2>&1
  t=$(tail -1 "$BASE/time"); enq_s=${t% *}; enq_mib=$(( ${t#* } / 1024 ))
  disk=$(du -sm "$d" | cut -f1)
  id=$("$Q" --data-dir "$d" list --limit 1 --json | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)
  st=$(lat "$Q" --data-dir "$d" status); li=$(lat "$Q" --data-dir "$d" list --limit 50)
  sh=$(lat "$Q" --data-dir "$d" show "$id")
  s=$(date +%s%N); "$Q" --data-dir "$d" export --sqlite "$BASE/n$n.db" --force >/dev/null; exp_d=$(secs_since "$s")
  start_paused "$d"
  pid=$(sup_pid "$d"); rss0=$(rss_mib "$pid")
  sst=$(lat "$Q" --data-dir "$d" status); sli=$(lat "$Q" --data-dir "$d" list --limit 50)
  ssh=$(lat "$Q" --data-dir "$d" show "$id")
  s=$(date +%s%N); "$Q" --data-dir "$d" export --sqlite "$BASE/n$n.db" --force >/dev/null; exp_s=$(secs_since "$s")
  if [ "$n" -ge "$largest" ]; then largest=$n; rate_large=$(drain "$d"); fi
  "$Q" --data-dir "$d" worker stop >/dev/null
  # The same N lines through a supervisor started on an empty store.
  e="$BASE/e$n"; rm -rf "$e"; start_paused "$e"; epid=$(sup_pid "$e")
  s=$(date +%s%N); "$Q" --data-dir "$e" enqueue --file "$f" >/dev/null 2>&1; enq_sup=$(secs_since "$s")
  rss1=$(rss_mib "$epid")
  "$Q" --data-dir "$e" worker stop >/dev/null; rm -rf "$e"
  per_m=$(awk -v m="$disk" -v n="$n" 'BEGIN { printf "%.0f", m * 1e6 / n }')
  printf '| %s | %s s | %s MiB | %s / %s / %s ms | %s / %s / %s ms | %s / %s s | %s / %s MiB (%s s) | %s MiB (%s MiB) |\n' \
    "$n" "$enq_s" "$enq_mib" "$st" "$li" "$sh" "$sst" "$sli" "$ssh" "$exp_d" "$exp_s" "$rss0" "$rss1" "$enq_sup" "$disk" "$per_m"
  rm -rf "$d" "$BASE/n$n.db"
done

# The drain rate with a small queue, measured the same way.
d="$BASE/drain$DRAIN"; rm -rf "$d"
start_paused "$d"
top_up() { lines "$DRAIN" | "$Q" --data-dir "$d" enqueue --file - >/dev/null 2>&1; }
rate_small=$(drain "$d" top_up)
"$Q" --data-dir "$d" worker stop >/dev/null; rm -rf "$d"
echo
ratio=$(awk -v a="${rate_large%% *}" -v b="${rate_small%% *}" 'BEGIN { printf "%.2f", a / b }')
echo "Drain of $DRAIN \`true\` jobs with 4 workers, median (three runs): $rate_small jobs/s with $DRAIN queued, $rate_large jobs/s with $largest queued: $ratio of the small queue's rate."
