#!/usr/bin/env python3
"""Whole-command benchmark: `custody run -e E -- true` under a pre-approved
grant, against bare `true` and `env K=V true`, measured side by side in one
run (interleaved, so machine noise hits all three alike).

Usage: python3 benches/run_overhead.py [--runs 300] [--bin target/release/custody]
Builds nothing itself: run `cargo build --release -p custody` first.
Prints the median and p90 wall time of each, and custody's overhead over
bare `true` (target: <= 5 ms median).
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
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--bin", default="target/release/custody")
    ap.add_argument("--cwd", default=None,
                    help="directory the commands run in (default: the benchmark's own temp dir). "
                         "custody's post-run leak check walks it, so its size matters")
    args = ap.parse_args()
    custody = os.path.abspath(args.bin)
    if not os.path.exists(custody):
        sys.exit(f"{custody} not found: run `cargo build --release -p custody` first")
    true_bin = shutil.which("true")
    env_bin = shutil.which("env")

    tmp = tempfile.mkdtemp(prefix="custody-bench-")
    env = dict(os.environ, CUSTODY_HOME=f"{tmp}/home", CUSTODY_RUNTIME_DIR=f"{tmp}/run")
    env.pop("XDG_DATA_HOME", None)

    def c(*a, stdin=""):
        subprocess.run([custody, *a], input=stdin.encode(), env=env, check=True,
                       stdout=subprocess.DEVNULL)

    try:
        c("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf",
          stdin="bench passphrase\n135790\n")
        c("unlock", "--passphrase-stdin", stdin="bench passphrase\n")
        c("env", "create", "bench")
        c("set", "bench", "TOKEN", stdin="bench-token-value-0123456789")
        with open(f"{tmp}/home/policy.toml", "w") as f:
            f.write('[[clients.cli.preapproved]]\nargv = ["true"]\n'
                    'environments = ["bench"]\nexpires = "2099-01-01T00:00:00Z"\n')
        cases = {
            "true": [true_bin],
            "env K=V true": [env_bin, "TOKEN=bench-token-value-0123456789", true_bin],
            "custody run -e bench -- true": [custody, "run", "-e", "bench", "--", "true"],
        }
        cwd = os.path.abspath(args.cwd) if args.cwd else f"{tmp}/work"
        os.makedirs(cwd, exist_ok=True)
        times = {k: [] for k in cases}
        for _ in range(10):  # warm up caches and the broker
            for argv in cases.values():
                subprocess.run(argv, env=env, check=True, cwd=cwd)
        for _ in range(args.runs):
            for name, argv in cases.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, check=True, cwd=cwd)
                times[name].append((time.perf_counter() - t0) * 1000)
        base = statistics.median(times["true"])
        print(f"{'command':<32} {'median ms':>10} {'p90 ms':>8} {'x true':>7}")
        results = {}
        for name, ts in times.items():
            ts.sort()
            med, p90 = statistics.median(ts), ts[int(len(ts) * 0.9)]
            results[name] = {"median_ms": round(med, 3), "p90_ms": round(p90, 3)}
            print(f"{name:<32} {med:>10.3f} {p90:>8.3f} {med / base:>7.2f}")
        over = results["custody run -e bench -- true"]["median_ms"] - results["true"]["median_ms"]
        print(f"custody overhead over bare true: {over:.3f} ms median (target <= 5 ms), "
              f"{args.runs} interleaved runs each, in {cwd}")
        print(json.dumps({"runs": args.runs, "results": results, "overhead_ms": round(over, 3)}))
    finally:
        subprocess.run([custody, "lock"], env=env, stdout=subprocess.DEVNULL)
        st = subprocess.run([custody, "status", "--json"], env=env, capture_output=True)
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
