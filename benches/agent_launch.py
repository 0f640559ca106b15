#!/usr/bin/env python3
"""Whole-command benchmark: `custody agent -- true` (register with the broker, become the
subreaper, enter user/mount/PID namespaces, mount a private /proc, apply Landlock, run)
against bare `true`, measured interleaved in one run, so machine noise hits both alike.

Usage: python3 benches/agent_launch.py [--runs 200] [--bin target/release/custody]
Builds nothing itself: run `cargo build --release -p custody` first. Prints the median and
p90 wall time of each and the launcher's overhead over bare `true` (target: <= 10 ms median).
`custody --version` (a custody process that does nothing) is measured too, as the floor of
any custody command.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--bin", default="target/release/custody")
    args = ap.parse_args()
    custody = os.path.abspath(args.bin)
    if not os.path.exists(custody):
        sys.exit(f"{custody} not found: run `cargo build --release -p custody` first")
    tmp = tempfile.mkdtemp(prefix="custody-agent-bench-")
    env = dict(os.environ, HOME=f"{tmp}/home", CUSTODY_HOME=f"{tmp}/custody",
               CUSTODY_RUNTIME_DIR=f"{tmp}/run")
    for k in ("XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        env.pop(k, None)
    for d in ("home/.ssh", "home/.config", "work"):
        os.makedirs(f"{tmp}/{d}")
    cwd = f"{tmp}/work"

    def c(*a, stdin=""):
        subprocess.run([custody, *a], input=stdin.encode(), env=env, check=True,
                       stdout=subprocess.DEVNULL, cwd=cwd)

    try:
        c("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf",
          stdin="bench passphrase\n135790\n")
        c("unlock", "--passphrase-stdin", stdin="bench passphrase\n")
        true_bin = shutil.which("true")
        cases = {
            "true": [true_bin],
            "custody --version": [custody, "--version"],
            "custody agent -- true": [custody, "agent", "--", true_bin],
        }
        times = {k: [] for k in cases}
        for _ in range(10):
            for argv in cases.values():
                subprocess.run(argv, env=env, check=True, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        for _ in range(args.runs):
            for name, argv in cases.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, check=True, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                times[name].append((time.perf_counter() - t0) * 1000)
        base = statistics.median(times["true"])
        print(f"{'command':<24} {'median ms':>10} {'p90 ms':>8} {'x true':>7}")
        results = {}
        for name, ts in times.items():
            ts.sort()
            med, p90 = statistics.median(ts), ts[int(len(ts) * 0.9)]
            results[name] = {"median_ms": round(med, 3), "p90_ms": round(p90, 3)}
            print(f"{name:<24} {med:>10.3f} {p90:>8.3f} {med / base:>7.2f}")
        over = results["custody agent -- true"]["median_ms"] - results["true"]["median_ms"]
        print(f"launch overhead over bare true: {over:.3f} ms median (target <= 10 ms), "
              f"{args.runs} interleaved runs each")
        print(json.dumps({"runs": args.runs, "results": results, "overhead_ms": round(over, 3)}))
    finally:
        subprocess.run([custody, "lock"], env=env, stdout=subprocess.DEVNULL, cwd=cwd)
        st = subprocess.run([custody, "--json", "status"], env=env, capture_output=True, cwd=cwd)
        try:
            pid = json.loads(st.stdout).get("pid")
            if pid:
                os.kill(pid, 15)
        except (ValueError, ProcessLookupError):
            pass
        time.sleep(0.3)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
