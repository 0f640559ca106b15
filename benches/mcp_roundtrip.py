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
own latency, without the SDK's validation), interleaved call by call with the
baseline's; the default runs both.
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

from run_overhead import fresh_copy


def calls(cwd):
    run = {"command": ["true"], "cwd": cwd}
    return [("run true (pre-approved, 10 variables)", dict(run, environments=["app"])),
            ("run true (pre-approved, 1,000 variables)", dict(run, environments=["bench"])),
            ("list_environments (1,010 variables)", {})]


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


class RawSession:
    """A bare JSON-RPC client over the pipes of one `custody mcp`: the
    server's own latency, without the SDK's validation and task switching."""

    def __init__(self, command, env):
        self.p = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.n = 0
        self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "bench", "version": "1"}})
        self.call("notifications/initialized", {}, notify=True)

    def call(self, method, params, notify=False):
        msg = {"jsonrpc": "2.0", "method": method, "params": params}
        if not notify:
            self.n += 1
            msg["id"] = self.n
        self.p.stdin.write((json.dumps(msg) + "\n").encode())
        self.p.stdin.flush()
        while not notify:
            m = json.loads(self.p.stdout.readline())
            if m.get("id") == self.n:
                return m

    def timed(self, tool, args):
        t0 = time.perf_counter()
        r = self.call("tools/call", {"name": tool, "arguments": args})
        if "error" in r or r["result"].get("isError"):
            raise SystemExit(f"{tool} failed: {r}")
        return (time.perf_counter() - t0) * 1000

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def bench_raw(setups, runs):
    """The calls from a raw client against every setup, interleaved call by
    call (so the machine's drift hits every build alike: measured one after
    the other, the build measured first came out up to 1.7 ms slower on
    calls whose code it shares with the other)."""
    sessions = [RawSession(s.command, s.env) for s in setups]
    out = [{} for _ in setups]
    try:
        for name, args in calls(setups[0].work):
            tool = "run" if name.startswith("run") else "list_environments"
            for s, setup in zip(sessions, setups):
                for _ in range(10):
                    s.timed(tool, dict(args, cwd=setup.work) if "cwd" in args else args)
            ts = [[] for _ in setups]
            for _ in range(runs):
                for i, (s, setup) in enumerate(zip(sessions, setups)):
                    ts[i].append(s.timed(tool, dict(args, cwd=setup.work) if "cwd" in args else args))
            for i in range(len(setups)):
                out[i][name] = summary(ts[i])
    finally:
        for s in sessions:
            s.close()
    return out


class Setup:
    """A vault (10 and 1,000 variables, pre-approved `true`) and a broker
    for one custody build, and the command that starts its MCP server."""

    def __init__(self, source):
        self.tmp = tmp = tempfile.mkdtemp(prefix="custody-mcp-bench-")
        # Measured from a fresh copy (see run_overhead.fresh_copy).
        self.custody = custody = fresh_copy(source, f"{tmp}/custody")
        self.env = env = dict(os.environ, CUSTODY_HOME=f"{tmp}/home", CUSTODY_RUNTIME_DIR=f"{tmp}/run")
        env.pop("XDG_DATA_HOME", None)
        env.pop("XDG_RUNTIME_DIR", None)
        self.work = f"{tmp}/work"
        self.command = ["sh", "-c", f'"{custody}" mcp; exit $?']
        c = self.c
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
        os.makedirs(self.work)
        with open(f"{tmp}/home/policy.toml", "w") as f:
            for e in ("app", "bench"):
                f.write(f'[[clients."*".preapproved]]\nargv = ["true"]\nenvironments = ["{e}"]\n'
                        'expires = "2099-01-01T00:00:00Z"\n')
        # Sealed policy (builds since the sealed policy); an older baseline
        # build reads the file and has no `policy apply`.
        subprocess.run([custody, "policy", "apply", f"{tmp}/home/policy.toml", "--pin-stdin"],
                       input=b"135790\n", env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def c(self, *args, stdin=""):
        subprocess.run([self.custody, *args], input=stdin.encode(), env=self.env, check=True,
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
        time.sleep(0.3)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--bin", default="target/release/custody")
    ap.add_argument("--client", choices=["sdk", "raw", "both"], default="both")
    ap.add_argument("--baseline", default=None,
                    help="another custody binary (e.g. the previous commit's), measured in the same run")
    a = ap.parse_args()
    labelled = [("", a.bin)] + ([(" (baseline)", a.baseline)] if a.baseline else [])
    setups = []
    results = {}
    try:
        for _, binary in labelled:
            setups.append(Setup(os.path.abspath(binary)))
        if a.client in ("raw", "both"):
            for (label, _), res in zip(labelled, bench_raw(setups, a.runs)):
                results["raw JSON-RPC client" + label] = res
        if a.client in ("sdk", "both"):
            # One build after the other (the SDK's sessions are async).
            for (label, _), setup in zip(labelled, setups):
                results["Python SDK client" + label] = asyncio.run(
                    bench_sdk(setup.command, setup.env, setup.work, a.runs))
    finally:
        for setup in setups:
            setup.stop()
    for client, res in results.items():
        print(f"{'MCP tool call, ' + client:<44} {'median ms':>10} {'p90 ms':>8}")
        for k, (med, p90) in res.items():
            print(f"  {k:<42} {med:>10.2f} {p90:>8.2f}")
    print(json.dumps({c: {k: {"median_ms": round(m, 3), "p90_ms": round(p, 3)} for k, (m, p) in r.items()}
                      for c, r in results.items()}))


if __name__ == "__main__":
    main()
