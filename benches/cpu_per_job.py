#!/usr/bin/env python3
"""Where the CPU of a drain goes, per job: the supervisor, its workers, the jobs' shells (and,
with a database, every PostgreSQL server process of this machine).

    cargo build --release
    python3 benches/cpu_per_job.py target/release/queuectl 3000            # embedded store
    python3 benches/cpu_per_job.py target/release/queuectl 3000 URL        # PostgreSQL
    python3 benches/cpu_per_job.py OLD_BINARY 3000 ; python3 benches/cpu_per_job.py NEW 3000

N `true` jobs are enqueued into a fresh data directory (and, with URL, a fresh database of that
server, dropped afterwards), then a supervisor with 4 workers drains them. The figures are the
processes' utime + stime from /proc (the shells' as the workers' reaped children), divided by
N; the rate is from the start of the supervisor to the last completion seen by `status`, polled
every 50 ms. Run two binaries alternately on a quiet machine to compare them.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")


def stat(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return [int(x) for x in fields[11:15]]  # utime stime cutime cstime


def postgres_ticks():
    total = 0
    for p in glob.glob("/proc/[0-9]*"):
        try:
            if open(p + "/comm").read().strip() in ("postgres", "postmaster"):
                s = stat(p.rsplit("/", 1)[1])
                total += s[0] + s[1]
        except OSError:
            pass
    return total


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    binary, n = sys.argv[1], int(sys.argv[2])
    server = sys.argv[3] if len(sys.argv) == 4 else None
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "q")
    args = [binary, "--data-dir", data]
    db = None
    if server:
        db = "cpu_per_job_%d" % int(time.time() * 1000)
        subprocess.run(["psql", "-q", server, "-c", f"CREATE DATABASE {db}"], check=True)
        args += ["--database-url", server.rsplit("/", 1)[0] + "/" + db]

    def q(*a):
        return subprocess.run(args + list(a), capture_output=True, text=True)

    try:
        jobs = os.path.join(tmp, "jobs.jsonl")
        with open(jobs, "w") as f:
            f.write('{"command":"true"}\n' * n)
        r = q("enqueue", "--file", jobs)
        if r.returncode != 0:
            sys.exit(r.stderr)
        pg0 = postgres_ticks() if server else 0
        t0 = time.time()
        q("worker", "start", "--count", "4")
        pid = int(open(os.path.join(data, "lock")).read().strip())
        while json.loads(q("status", "--json").stdout)["completed"] < n:
            time.sleep(0.05)
        wall = time.time() - t0
        sup = stat(pid)
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
        workers = [stat(k) for k in kids]
        pg = postgres_ticks() - pg0 if server else 0
        q("worker", "stop")

        def ms(ticks):
            return ticks * 1000 / TICKS / n

        line = (
            f"{n} jobs in {wall:.2f}s ({n / wall:.0f}/s); CPU per job: "
            f"supervisor {ms(sup[0] + sup[1]):.3f} ms, "
            f"workers {ms(sum(w[0] + w[1] for w in workers)):.3f} ms, "
            f"job shells {ms(sum(w[2] + w[3] for w in workers)):.3f} ms"
        )
        if server:
            line += f", postgres {ms(pg):.3f} ms"
        print(line)
    finally:
        q("worker", "stop", "--force")
        if db:
            subprocess.run(["psql", "-q", server, "-c", f"DROP DATABASE {db} WITH (FORCE)"])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
