#!/usr/bin/env python3
"""A scripted agent session against `custody mcp`, with the official Python
`mcp` SDK as the client (a real external client, not a mock).

It makes its own vault in a temp dir, starts the broker, and drives every
tool in both protocol eras (the 2025-11-25 `initialize` handshake and the
2026-07-28 stateless era), approving requests with the real `custody approve`
from outside the agent's process tree. Every message the client receives
(results, errors, notifications) is recorded, and at the end none of them may
contain a secret value or its base64 / hex / URL / JSON-escaped form.

Usage: agent_session.py PATH_TO_CUSTODY
Prints one line per check and a closing 'N passed, N failed' line.
"""
import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import urllib.parse

import mcp
from mcp.client.stdio import StdioServerParameters

CUSTODY = os.path.abspath(sys.argv[1])
PASS = "agent-session passphrase"
PIN = "482916"
ENV = "shop-dev"

results = {"passed": 0, "failed": 0}
seen_messages = []  # every object the client received, as JSON text


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + str(detail)[:500]}", flush=True)


def forms(value: str):
    b = value.encode()
    out = {value, b.hex(), b.hex().upper(), base64.b64encode(b).decode(),
           base64.b64encode(b).decode().rstrip("="), base64.urlsafe_b64encode(b).decode(),
           urllib.parse.quote(value, safe=""), json.dumps(value)[1:-1]}
    return {f for f in out if len(f) >= 8}


class Env:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="custody-agent-")
        self.env = dict(os.environ, CUSTODY_HOME=f"{self.tmp}/home",
                        CUSTODY_RUNTIME_DIR=f"{self.tmp}/run")
        self.env.pop("XDG_DATA_HOME", None)
        self.env.pop("XDG_RUNTIME_DIR", None)
        # Short wait before `run` answers "pending", so the test is quick.
        self.env["CUSTODY_MCP_APPROVAL_WAIT"] = "3s"

    def custody(self, *args, stdin="", check_rc=True):
        p = subprocess.run([CUSTODY, *args], input=stdin.encode(), env=self.env,
                           capture_output=True)
        if check_rc and p.returncode != 0:
            raise RuntimeError(f"custody {' '.join(args)}: {p.stderr.decode()}")
        return p

    def pending_ids(self):
        out = self.custody("approve", "--list", "--json").stdout
        return [p["id"] for p in json.loads(out)]


def server(env: Env) -> StdioServerParameters:
    # Through `sh`, which stays alive as the MCP server's parent: the broker
    # registers it as the agent. This test process is its parent, not
    # registered, so `custody approve` run from here is not in the agent's tree.
    return StdioServerParameters(command="sh", args=["-c", f'"{CUSTODY}" mcp; exit $?'],
                                 env=env.env, cwd=env.tmp)


def record(obj):
    try:
        seen_messages.append(obj.model_dump_json())
    except AttributeError:
        seen_messages.append(json.dumps(obj, default=str))


def structured(res):
    record(res)
    # The SDK's models use snake_case fields (camelCase on the wire).
    sc = getattr(res, "structured_content", None) or getattr(res, "structuredContent", None)
    if sc:
        return sc
    for c in getattr(res, "content", []) or []:
        text = getattr(c, "text", None)
        if text:
            try:
                return json.loads(text)
            except ValueError:
                return {"text": text}
    return {}


async def message_handler(msg):
    record(msg)


async def session(env: Env, mode: str, values):
    era = "2025-11-25" if mode == "legacy" else "2026-07-28"
    progress = []

    async def on_progress(p, total, message):
        progress.append((p, total, message))
        seen_messages.append(json.dumps([p, total, message]))

    async with mcp.Client(server(env), mode=mode, message_handler=message_handler,
                          logging_callback=lambda m: record(m) or asyncio.sleep(0),
                          read_timeout_seconds=90) as c:
        check(f"[{era}] connected (protocol {c.protocol_version})", bool(c.protocol_version))
        tools = await c.list_tools()
        record(tools)
        names = {t.name for t in tools.tools}
        want = {"list_environments", "create_environment", "declare_variable", "generate_secret",
                "run", "request_status", "list_grants", "revoke_grant", "audit_tail"}
        check(f"[{era}] all tools listed", want <= names, sorted(want - names))
        ro = {t.name: t.annotations for t in tools.tools}
        check(f"[{era}] list_environments is read-only",
              getattr(ro.get("list_environments"), "read_only_hint", None) is True)
        check(f"[{era}] revoke_grant is destructive",
              getattr(ro.get("revoke_grant"), "destructive_hint", None) is True)

        envs = structured(await c.call_tool("list_environments", {}))
        text = json.dumps(envs)
        check(f"[{era}] list_environments shows names", ENV in text and "API_TOKEN" in text, text)

        name = f"agent-made-{era[:4]}"
        r = structured(await c.call_tool("create_environment",
                                         {"name": name, "description": "made by the agent"}))
        check(f"[{era}] create_environment", name in json.dumps(r), r)
        r = structured(await c.call_tool("declare_variable",
                                         {"environment": name, "name": "DB_URL",
                                          "description": "fill me"}))
        check(f"[{era}] declare_variable", "DB_URL" in json.dumps(r), r)
        r = structured(await c.call_tool("generate_secret",
                                         {"environment": name, "name": "SESSION_KEY", "length": 40}))
        check(f"[{era}] generate_secret", "SESSION_KEY" in json.dumps(r), r)

        # Pre-approved by policy: runs at once, output masked.
        script = 'echo "tok=$API_TOKEN"; printf %s "$API_TOKEN" | base64; echo "$DB_PASSWORD" >&2'
        r = structured(await c.call_tool("run", {"environments": [ENV], "command": ["sh", "-c", script],
                                                  "cwd": env.tmp, "timeout_seconds": 30}))
        check(f"[{era}] pre-approved run masks stdout and stderr",
              "[masked:API_TOKEN]" in r.get("stdout", "") and "[masked:DB_PASSWORD]" in r.get("stderr", ""), r)
        check(f"[{era}] run reports masks and lease", r.get("masked_count", 0) >= 3 and r.get("lease_id"), r)

        # Needs approval: answers "pending" after the short wait, then approved.
        cmd = ["sh", "-c", f"echo approved-{era}; echo $API_TOKEN"]
        r = structured(await c.call_tool("run", {"environments": [ENV], "command": cmd, "cwd": env.tmp,
                                                  "timeout_seconds": 30},
                                         progress_callback=on_progress))
        check(f"[{era}] unapproved run returns pending", r.get("status") == "pending" and r.get("request_id"), r)
        rid = r.get("request_id", "")
        check(f"[{era}] pending carries the approve hint", f"custody approve {rid}" in json.dumps(r), r)
        s = structured(await c.call_tool("request_status", {"request_id": rid}))
        check(f"[{era}] request_status says pending", s.get("status") == "pending", s)
        env.custody("approve", rid, "--once", "--pin-stdin", stdin=PIN + "\n")
        s = structured(await c.call_tool("request_status", {"request_id": rid}))
        check(f"[{era}] request_status returns the run result after approval",
              s.get("exit_code") == 0 and f"approved-{era}" in s.get("stdout", "")
              and "[masked:API_TOKEN]" in s.get("stdout", ""), s)

        # Denied.
        cmd = ["sh", "-c", f"echo denied-{era}"]
        r = structured(await c.call_tool("run", {"environments": [ENV], "command": cmd, "cwd": env.tmp,
                                                  "timeout_seconds": 30}))
        rid = r.get("request_id", "")
        env.custody("deny", rid)
        s = structured(await c.call_tool("request_status", {"request_id": rid}))
        check(f"[{era}] denied request says denied", s.get("status") == "denied" or "denied" in json.dumps(s), s)

        # Grants: approve one for a while, list it, revoke it.
        cmd = ["sh", "-c", f"echo granted-{era}"]
        r = structured(await c.call_tool("run", {"environments": [ENV], "command": cmd, "cwd": env.tmp,
                                                  "timeout_seconds": 30}))
        rid = r.get("request_id", "")
        env.custody("approve", rid, "--for", "10m", "--pin-stdin", stdin=PIN + "\n")
        structured(await c.call_tool("request_status", {"request_id": rid}))
        g = structured(await c.call_tool("list_grants", {}))
        grants = g.get("grants", g if isinstance(g, list) else [])
        check(f"[{era}] list_grants shows the timed grant", len(grants) >= 1, g)
        if grants:
            gid = grants[0].get("grant_id")
            rv = structured(await c.call_tool("revoke_grant", {"grant_id": gid}))
            check(f"[{era}] revoke_grant", gid in json.dumps(rv), rv)

        a = structured(await c.call_tool("audit_tail", {}))
        check(f"[{era}] audit_tail shows this agent's requests", "request" in json.dumps(a), a)

        # Errors name what to do.
        bad = await c.call_tool("run", {"environments": ["no-such-env"], "command": ["true"],
                                        "cwd": env.tmp, "timeout_seconds": 5})
        record(bad)
        check(f"[{era}] an error is a tool error that says what to do",
              getattr(bad, "is_error", False) and "custody" in json.dumps(structured(bad)) + str(bad), bad)


def main():
    env = Env()
    values = {"API_TOKEN": "tok_" + secrets.token_urlsafe(24),
              "DB_PASSWORD": "pw-" + secrets.token_hex(12) + "/+&\"\\"}
    env.custody("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf", stdin=f"{PASS}\n{PIN}\n")
    env.custody("unlock", "--passphrase-stdin", stdin=PASS + "\n")
    env.custody("env", "create", ENV, "-d", "the shop, dev stage", "--pin-stdin", stdin=f"{PIN}\n")
    for k, v in values.items():
        env.custody("set", ENV, k, "--pin-stdin", stdin=f"{PIN}\n{v}")
    script = 'echo "tok=$API_TOKEN"; printf %s "$API_TOKEN" | base64; echo "$DB_PASSWORD" >&2'
    with open(f"{env.tmp}/home/policy.toml", "w") as f:
        f.write('[[clients."*".preapproved]]\n'
                f'argv = {json.dumps(["sh", "-c", script])}\n'
                f'environments = ["{ENV}"]\nexpires = "2099-01-01T00:00:00Z"\n')
    env.custody("policy", "apply", f"{env.tmp}/home/policy.toml", "--pin-stdin", stdin=f"{PIN}\n")
    try:
        for mode in ("legacy", "auto"):
            try:
                asyncio.run(session(env, mode, values))
            except Exception as e:  # a crash is a failed check, not a traceback
                check(f"[{mode}] session completed", False, repr(e))
        leaked = [f for v in values.values() for f in forms(v) if any(f in m for m in seen_messages)]
        check(f"no value or encoded form in any of {len(seen_messages)} received messages",
              not leaked, "leaked forms found")
    finally:
        env.custody("lock", check_rc=False)
        st = env.custody("status", "--json", check_rc=False)
        try:
            pid = json.loads(st.stdout).get("pid")
            if pid:
                os.kill(pid, 15)
        except (ValueError, ProcessLookupError):
            pass
    print(f"mcp-python-sdk: {results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
