#!/usr/bin/env python3
"""Whole-command benchmark: how long a custody binary takes to start and exit
(`custody --version`: the loader, the Rust runtime, the command line), against
bare `true` and a baseline binary, interleaved in one run so machine noise hits
all of them alike.

Usage: python3 benches/start.py [--runs 1000] [--bin target/release/custody]
                                [--baseline OTHER_CUSTODY]
e.g. the static-pie build `scripts/install` makes against the dynamic one:
    ./scripts/install --root /tmp/inst && cargo build --release -p custody
    python3 benches/start.py --bin /tmp/inst/bin/custody --baseline target/release/custody
Prints the median and p90 wall time of each and the difference to the baseline.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from run_overhead import fresh_copy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--bin", default="target/release/custody")
    ap.add_argument("--baseline", default=None)
    args = ap.parse_args()
    cases = {"true": [shutil.which("true")]}
    tmp = tempfile.mkdtemp(prefix="custody-start-bench-")
    for name, b in [("custody --version", args.bin), ("baseline --version", args.baseline)]:
        if b is None:
            continue
        if not os.path.exists(b):
            sys.exit(f"{b} not found")
        # A fresh copy of each (see run_overhead.fresh_copy).
        cases[name] = [fresh_copy(b, os.path.join(tmp, name.split()[0])), "--version"]
    times = {k: [] for k in cases}
    for _ in range(20):  # warm the page cache
        for argv in cases.values():
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    for _ in range(args.runs):
        for name, argv in cases.items():
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            times[name].append((time.perf_counter() - t0) * 1000)
    print(f"{'command':<22} {'median ms':>10} {'p90 ms':>8}")
    med = {}
    for name, ts in times.items():
        ts.sort()
        med[name] = statistics.median(ts)
        print(f"{name:<22} {med[name]:>10.3f} {ts[int(len(ts) * 0.9)]:>8.3f}")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.baseline:
        d = med["custody --version"] - med["baseline --version"]
        print(f"this build vs baseline: {d:+.3f} ms median, {args.runs} interleaved runs each")


if __name__ == "__main__":
    main()
