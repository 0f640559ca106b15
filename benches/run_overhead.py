#!/usr/bin/env python3
"""Whole-command benchmark: `custody run -e E -- true` (10 variables) under a
pre-approved grant, against bare `true` and `env K=V true` (the same 10
variables), measured side by side in one
run (interleaved, so machine noise hits all of them alike).

Usage: python3 benches/run_overhead.py [--runs 300] [--bin target/release/custody]
                                       [--baseline OTHER_CUSTODY] [--cwd DIR]
Builds nothing itself: run `cargo build --release -p custody` first. With
`--baseline`, a second custody build (e.g. of the previous commit, built in a
git worktree) gets its own vault and broker and runs interleaved too, so a
change's cost is measured in the same run.
Prints the median and p90 wall time of each, custody's overhead over bare
`true` (target: <= 5 ms median) and over `env K=V true` (target: <= 2 ms).
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

TOKEN = "bench-token-value-0123456789"
# The measure: a run with 10 variables against `env` setting the same 10.
VARS = [(f"TOKEN_{i}", f"{TOKEN}-{i}") for i in range(10)]


class Setup:
    """A vault, a broker and a pre-approved `true` for one custody binary."""

    def __init__(self, custody, tmp):
        self.custody = custody
        self.env = dict(os.environ, CUSTODY_HOME=f"{tmp}/home", CUSTODY_RUNTIME_DIR=f"{tmp}/run")
        self.env.pop("XDG_DATA_HOME", None)
        self.env.pop("XDG_RUNTIME_DIR", None)
        self.c("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf",
               stdin="bench passphrase\n135790\n")
        self.c("unlock", "--passphrase-stdin", stdin="bench passphrase\n")
        # With the broker up, a change is proven with the passphrase (this
        # build) or the line is skipped (older baselines): both accept it.
        self.c("--passphrase-stdin", "env", "create", "bench", stdin="bench passphrase\n")
        for name, value in VARS:
            self.c("--passphrase-stdin", "set", "bench", name, stdin=f"bench passphrase\n{value}")
        with open(f"{tmp}/home/policy.toml", "w") as f:
            f.write('[[clients.cli.preapproved]]\nargv = ["true"]\n'
                    'environments = ["bench"]\nexpires = "2099-01-01T00:00:00Z"\n')
        # Sealed policy (builds since the sealed policy); an older baseline
        # build reads the file and has no `policy apply`.
        subprocess.run([custody, "policy", "apply", f"{tmp}/home/policy.toml", "--pin-stdin"],
                       input=b"135790\n", env=self.env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def c(self, *a, stdin=""):
        subprocess.run([self.custody, *a], input=stdin.encode(), env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([self.custody, "lock"], env=self.env, stdout=subprocess.DEVNULL)
        st = subprocess.run([self.custody, "status", "--json"], env=self.env, capture_output=True)
        try:
            pid = json.loads(st.stdout).get("pid")
            if pid:
                os.kill(pid, 15)
        except (ValueError, ProcessLookupError):
            pass


def fresh_copy(binary, to):
    """`binary` copied to `to` (a new file, so every binary measured enters
    the page cache the same way); returns `to`."""
    shutil.copyfile(binary, to)
    os.chmod(to, 0o755)
    return to


def clean_up(setups, tmp):
    """Stops every setup's broker and removes the benchmark's temp dir."""
    for s in setups:
        s.stop()
    time.sleep(0.3)
    shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--bin", default="target/release/custody")
    ap.add_argument("--baseline", default=None,
                    help="another custody binary, measured interleaved as `baseline custody run`")
    ap.add_argument("--cwd", default=None,
                    help="directory the commands run in (default: the benchmark's own temp dir). "
                         "custody's post-run leak check walks it, so its size matters")
    args = ap.parse_args()
    custody = os.path.abspath(args.bin)
    for b in [custody] + ([args.baseline] if args.baseline else []):
        if not os.path.exists(b):
            sys.exit(f"{b} not found: run `cargo build --release -p custody` first")
    true_bin = shutil.which("true")
    env_bin = shutil.which("env")

    tmp = tempfile.mkdtemp(prefix="custody-bench-")
    # Each binary measured from a fresh copy: how a file came into the page
    # cache (written, or read back after eviction) changes how many page
    # faults its start takes, by 0.15 ms here for the same bytes.
    custody = fresh_copy(custody, f"{tmp}/this-custody")
    baseline = fresh_copy(os.path.abspath(args.baseline), f"{tmp}/base-custody") if args.baseline else None
    setups = []
    try:
        this = Setup(custody, f"{tmp}/this")
        setups.append(this)
        cases = {
            "true": ([true_bin], this.env),
            "env K=V true": ([env_bin, *[f"{k}={v}" for k, v in VARS], true_bin], this.env),
            "custody run -e bench -- true": ([custody, "run", "-e", "bench", "--", "true"], this.env),
        }
        if args.baseline:
            base = Setup(baseline, f"{tmp}/base")
            setups.append(base)
            cases["baseline custody run"] = (
                [base.custody, "run", "-e", "bench", "--", "true"], base.env)
        cwd = os.path.abspath(args.cwd) if args.cwd else f"{tmp}/work"
        os.makedirs(cwd, exist_ok=True)
        times = {k: [] for k in cases}
        for _ in range(10):  # warm up caches and the brokers
            for argv, env in cases.values():
                subprocess.run(argv, env=env, check=True, cwd=cwd)
        for _ in range(args.runs):
            for name, (argv, env) in cases.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, check=True, cwd=cwd)
                times[name].append((time.perf_counter() - t0) * 1000)
        base_ms = statistics.median(times["true"])
        print(f"{'command':<32} {'median ms':>10} {'p90 ms':>8} {'x true':>7}")
        results = {}
        for name, ts in times.items():
            ts.sort()
            med, p90 = statistics.median(ts), ts[int(len(ts) * 0.9)]
            results[name] = {"median_ms": round(med, 3), "p90_ms": round(p90, 3)}
            print(f"{name:<32} {med:>10.3f} {p90:>8.3f} {med / base_ms:>7.2f}")
        over = results["custody run -e bench -- true"]["median_ms"] - results["true"]["median_ms"]
        print(f"custody overhead over bare true: {over:.3f} ms median (target <= 5 ms), "
              f"{args.runs} interleaved runs each, in {cwd}")
        over_env = (results["custody run -e bench -- true"]["median_ms"]
                    - results["env K=V true"]["median_ms"])
        print(f"custody overhead over env K=V true: {over_env:.3f} ms median (target <= 2 ms)")
        out = {"runs": args.runs, "results": results, "overhead_ms": round(over, 3),
               "overhead_over_env_ms": round(over_env, 3)}
        if args.baseline:
            d = (results["custody run -e bench -- true"]["median_ms"]
                 - results["baseline custody run"]["median_ms"])
            print(f"this build vs baseline: {d:+.3f} ms median")
            out["vs_baseline_ms"] = round(d, 3)
        print(json.dumps(out))
    finally:
        clean_up(setups, tmp)


if __name__ == "__main__":
    main()
