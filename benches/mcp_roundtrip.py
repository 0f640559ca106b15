#!/usr/bin/env python3
"""MCP round trips through the official Python `mcp` SDK against `custody mcp`:
a pre-approved `run` of `true`, and `list_environments` over 1,000 variables.
One session (initialize once); medians over N calls.

Usage: python benches/mcp_roundtrip.py [--runs 200] [--bin target/release/custody]
Needs the SDK: target/mcp-clients/venv/bin/python (scripts/test creates it).
Targets: run of `true` <= 15 ms median; list_environments (1,000 variables) <= 5 ms.
"""
import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import mcp
from mcp.client.stdio import StdioServerParameters


async def bench(params, cwd, runs):
    out = {}
    async with mcp.Client(params, mode="legacy") as c:
        for name, args in [("run true (pre-approved)", {"environments": ["bench"], "command": ["true"], "cwd": cwd}),
                           ("list_environments (1,000 variables)", {})]:
            tool = "run" if name.startswith("run") else "list_environments"
            for _ in range(10):
                await c.call_tool(tool, args)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r = await c.call_tool(tool, args)
                ts.append((time.perf_counter() - t0) * 1000)
                if r.is_error:
                    raise SystemExit(f"{tool} failed: {r}")
            ts.sort()
            out[name] = (statistics.median(ts), ts[int(len(ts) * 0.9)])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--bin", default="target/release/custody")
    a = ap.parse_args()
    custody = os.path.abspath(a.bin)
    tmp = tempfile.mkdtemp(prefix="custody-mcp-bench-")
    env = dict(os.environ, CUSTODY_HOME=f"{tmp}/home", CUSTODY_RUNTIME_DIR=f"{tmp}/run")
    env.pop("XDG_DATA_HOME", None)

    def c(*args, stdin=""):
        subprocess.run([custody, *args], input=stdin.encode(), env=env, check=True, stdout=subprocess.DEVNULL)

    try:
        c("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf", stdin="bench pass\n135790\n")
        c("unlock", "--passphrase-stdin", stdin="bench pass\n")
        with open(f"{tmp}/vars.env", "w") as f:
            for i in range(1000):
                f.write(f"VARIABLE_{i:04}=value-{i:04}-{'x' * 24}\n")
        c("import", "bench", f"{tmp}/vars.env")
        os.makedirs(f"{tmp}/work")
        with open(f"{tmp}/home/policy.toml", "w") as f:
            f.write('[[clients."*".preapproved]]\nargv = ["true"]\nenvironments = ["bench"]\n'
                    'expires = "2099-01-01T00:00:00Z"\n')
        params = StdioServerParameters(command="sh", args=["-c", f'"{custody}" mcp; exit $?'], env=env)
        res = asyncio.run(bench(params, f"{tmp}/work", a.runs))
        print(f"{'MCP tool call (Python SDK client)':<40} {'median ms':>10} {'p90 ms':>8}")
        for k, (med, p90) in res.items():
            print(f"{k:<40} {med:>10.2f} {p90:>8.2f}")
        print(json.dumps({k: {"median_ms": round(m, 3), "p90_ms": round(p, 3)} for k, (m, p) in res.items()}))
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
