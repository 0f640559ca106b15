#!/usr/bin/env python3
"""Whole-command benchmark: how fast a run's output gets through custody.

A pre-approved command prints SIZE MiB of log-like lines (`yes LINE | head
-c`); custody masks it against 100 vault values and writes it to /dev/null.
Measured side by side in one run, interleaved: the bare command, `custody
run --no-pty` (pipes), `custody run --pty` (a terminal), `script` on a bare pty (the kernel's
terminal layer alone) and, with
`--baseline`, another custody build's `custody run` (pipes; older builds
have no --pty).

Usage: python3 benches/run_output.py [--runs 5] [--mib 256]
                                     [--bin target/release/custody]
                                     [--baseline OTHER_CUSTODY]
Builds nothing itself: run `cargo build --release -p custody` first.
Prints each case's median wall time and throughput (MiB/s).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_overhead import Setup, clean_up  # noqa: E402  (same vault and broker set-up)

LINE = "2026-12-03T10:00:00Z INFO request handled path=/api/v1/orders status=200 ms=12"


def script(mib):
    return f"yes '{LINE}' | head -c {mib * 1024 * 1024}"


def prepare(setup, tmp, mib):
    """100 random values, and the command pre-approved."""
    with open(f"{tmp}/many.env", "w") as f:
        for i in range(100):
            f.write(f"V{i}={os.urandom(24).hex()}\n")
    subprocess.run([setup.custody, "--passphrase-stdin", "import", "bench", f"{tmp}/many.env"],
                   input=b"bench passphrase\n", env=setup.env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(f"{tmp}/policy.toml", "w") as f:
        f.write('[[clients.cli.preapproved]]\n'
                f'argv = ["sh", "-c", {json.dumps(script(mib))}]\n'
                'environments = ["bench"]\nexpires = "2099-01-01T00:00:00Z"\n')
    subprocess.run([setup.custody, "policy", "apply", f"{tmp}/policy.toml", "--pin-stdin"],
                   input=b"135790\n", env=setup.env, check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--bin", default="target/release/custody")
    ap.add_argument("--baseline", default=None)
    args = ap.parse_args()
    custody = os.path.abspath(args.bin)
    for b in [custody] + ([args.baseline] if args.baseline else []):
        if not os.path.exists(b):
            sys.exit(f"{b} not found: run `cargo build --release -p custody` first")
    tmp = tempfile.mkdtemp(prefix="custody-bench-output-")
    setups = []
    try:
        this = Setup(custody, f"{tmp}/this")
        setups.append(this)
        prepare(this, f"{tmp}/this", args.mib)
        cmd = ["sh", "-c", script(args.mib)]
        cases = {
            "bare command": (cmd, this.env),
            "custody run --no-pty": ([custody, "run", "--no-pty", "-e", "bench", "--", *cmd],
                                     this.env),
            "custody run --pty": ([custody, "run", "--pty", "-e", "bench", "--", *cmd],
                                  this.env),
        }
        if shutil.which("script"):
            # The kernel's terminal layer alone: `script` on a pty of its own.
            cases["script (a bare pty)"] = (
                ["script", "-qec", script(args.mib), "/dev/null"], this.env)
        if args.baseline:
            base = Setup(os.path.abspath(args.baseline), f"{tmp}/base")
            setups.append(base)
            prepare(base, f"{tmp}/base", args.mib)
            cases["baseline custody run"] = (
                [base.custody, "run", "-e", "bench", "--", *cmd], base.env)
        work = f"{tmp}/work"
        os.makedirs(work, exist_ok=True)
        times = {k: [] for k in cases}
        for i in range(args.runs + 1):
            for name, (argv, env) in cases.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, check=True, cwd=work, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
                if i > 0:  # the first round warms up
                    times[name].append(time.perf_counter() - t0)
        print(f"{'case':<26} {'median s':>9} {'MiB/s':>8}")
        out = {"mib": args.mib, "runs": args.runs, "values": 100, "results": {}}
        for name, ts in times.items():
            med = statistics.median(ts)
            out["results"][name] = {"median_s": round(med, 3),
                                    "mib_per_s": round(args.mib / med, 1)}
            print(f"{name:<26} {med:>9.3f} {args.mib / med:>8.1f}")
        print(json.dumps(out))
    finally:
        clean_up(setups, tmp)


if __name__ == "__main__":
    main()
