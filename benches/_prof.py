#!/usr/bin/env python3
"""MCP round trips through the official Python `mcp` SDK against `custody mcp`:
a pre-approved `run` of `true` in a 10-variable environment (and, for scale,
in a 1,000-variable one), and `list_environments` over 1,010 variables.
One session (initialize once); medians over N calls.

Usage: python benches/mcp_roundtrip.py [--runs 200] [--bin target/release/custody] [--client sdk|raw|both]
                                       [--baseline OTHER_CUSTODY]
Needs the SDK: target/mcp-clients/venv/bin/python (scripts/test creates it).
Targets: run of `true` <= 15 ms median; list_environments (1,000 variables) <= 5 ms.
--client raw measures the same calls with a bare JSON-RPC client (the server's
own latency, without the SDK's validation); the default runs both.
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

def calls(cwd):
    run = {"command": ["true"], "cwd": cwd}
    return [
            ("run true (pre-approved, 1,000 variables)", dict(run, environments=["bench"])),
            ]


def summary(ts):
    ts.sort()
    return statistics.median(ts), ts[int(len(ts) * 0.9)]


async def bench_sdk(command, env, cwd, runs):
    import mcp
    from mcp.client.stdio import StdioServerParameters

    out = {}
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    async with mcp.Client(params, mode="legacy") as c:
        for name, args in calls(cwd):
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
            out[name] = summary(ts)
    return out


def bench_raw(command, env, cwd, runs):
    """The same calls from a bare JSON-RPC client over the pipes: the
    server's own latency, without the SDK's validation and task switching."""
    p = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    n = 0

    def call(method, params, notify=False):
        nonlocal n
        msg = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notify:
            n += 1
            msg["id"] = n
        p.stdin.write((json.dumps(msg) + "\n").encode())
        p.stdin.flush()
        while not notify:
            m = json.loads(p.stdout.readline())
            if m.get("id") == n:
                return m

    call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "bench", "version": "1"}})
    call("notifications/initialized", {}, notify=True)
    out = {}
    for name, args in calls(cwd):
        tool = "run" if name.startswith("run") else "list_environments"
        for _ in range(10):
            call("tools/call", {"name": tool, "arguments": args})
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = call("tools/call", {"name": tool, "arguments": args})
            ts.append((time.perf_counter() - t0) * 1000)
            if "error" in r or r["result"].get("isError"):
                raise SystemExit(f"{tool} failed: {r}")
        out[name] = summary(ts)
    p.stdin.close()
    p.wait()
    return out


def measure(custody, client, runs):
    """Sets up a vault and broker for `custody` and measures the calls with
    `client` (`raw`, `sdk` or `both`)."""
    tmp = tempfile.mkdtemp(prefix="custody-mcp-bench-")
    env = dict(os.environ, CUSTODY_HOME=f"{tmp}/home", CUSTODY_RUNTIME_DIR=f"{tmp}/run")
    env.pop("XDG_DATA_HOME", None)
    env.pop("XDG_RUNTIME_DIR", None)

    def c(*args, stdin=""):
        subprocess.run([custody, *args], input=stdin.encode(), env=env, check=True, stdout=subprocess.DEVNULL)

    try:
        c("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf", stdin="bench pass\n135790\n")
        c("unlock", "--passphrase-stdin", stdin="bench pass\n")
        with open(f"{tmp}/vars.env", "w") as f:
            for i in range(1000):
                f.write(f"VARIABLE_{i:04}=value-{i:04}-{'x' * 24}\n")
        # With the broker up, a change is proven with the passphrase (this
        # build) or the line is skipped (older baselines): both accept it.
        c("--passphrase-stdin", "import", "bench", f"{tmp}/vars.env", stdin="bench pass\n")
        with open(f"{tmp}/app.env", "w") as f:
            for i in range(10):
                f.write(f"APP_{i}=app-value-{i}-{'y' * 24}\n")
        c("--passphrase-stdin", "import", "app", f"{tmp}/app.env", stdin="bench pass\n")
        os.makedirs(f"{tmp}/work")
        with open(f"{tmp}/home/policy.toml", "w") as f:
            for e in ("app", "bench"):
                f.write(f'[[clients."*".preapproved]]\nargv = ["true"]\nenvironments = ["{e}"]\n'
                        'expires = "2099-01-01T00:00:00Z"\n')
        # Sealed policy (builds since the sealed policy); an older baseline
        # build reads the file and has no `policy apply`.
        subprocess.run([custody, "policy", "apply", f"{tmp}/home/policy.toml", "--pin-stdin"],
                       input=b"135790\n", env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        command = ["sh", "-c", f'"{custody}" mcp; exit $?']
        results = {}
        if client in ("raw", "both"):
            results["raw JSON-RPC client"] = bench_raw(command, env, f"{tmp}/work", runs)
        if client in ("sdk", "both"):
            results["Python SDK client"] = asyncio.run(bench_sdk(command, env, f"{tmp}/work", runs))
        return results
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--bin", default="target/release/custody")
    ap.add_argument("--client", choices=["sdk", "raw", "both"], default="both")
    ap.add_argument("--baseline", default=None,
                    help="another custody binary (e.g. the previous commit's), measured in the same run")
    a = ap.parse_args()
    results = {}
    for label, binary in [("", a.bin)] + ([(" (baseline)", a.baseline)] if a.baseline else []):
        for client, res in measure(os.path.abspath(binary), a.client, a.runs).items():
            results[client + label] = res
    for client, res in results.items():
        print(f"{'MCP tool call, ' + client:<44} {'median ms':>10} {'p90 ms':>8}")
        for k, (med, p90) in res.items():
            print(f"  {k:<42} {med:>10.2f} {p90:>8.2f}")
    print(json.dumps({c: {k: {"median_ms": round(m, 3), "p90_ms": round(p, 3)} for k, (m, p) in r.items()}
                      for c, r in results.items()}))


if __name__ == "__main__":
    main()
