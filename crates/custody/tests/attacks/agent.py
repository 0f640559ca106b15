"""A hostile coding agent, scripted: an MCP client that starts `custody mcp`
as its child (so the broker registers this process as an agent client) and
whose shell children attack custody as the same user.

Usage: agent.py CUSTODY CLIENT_NAME STEPS_JSON

STEPS_JSON is a list of steps, run in order:
  {"shell": "..."}            `sh -c` as this agent's child (its cwd is the
                              agent's; CUSTODY_HOME/CUSTODY_RUNTIME_DIR are
                              inherited, as an agent's shell inherits them)
  {"tool": NAME, "args": {}}  an MCP tools/call (an argument "$last" stands
                              for the last request_id a tool answered with)
  {"sleep": SECONDS}
  {"signal": PATH}            create PATH (tells the test a point is reached)
  {"wait_file": PATH}         wait (up to 60 s) until PATH exists
  {"kill_mcp": true}          SIGKILL its `custody mcp` (so nothing registers
                              this agent again)
Prints one JSON line: the list of results (for a shell step
{"rc", "stdout", "stderr"}; for a tool step the structured result, or
{"error": text} for a tool error).
"""
import json
import os
import subprocess
import sys
import time

custody, client_name, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mcp = subprocess.Popen([custody, "mcp"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
next_id = 1


def rpc(method, params=None, notify=False):
    global next_id
    msg = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    if not notify:
        msg["id"] = next_id
        next_id += 1
    mcp.stdin.write((json.dumps(msg) + "\n").encode())
    mcp.stdin.flush()
    if notify:
        return None
    while True:
        line = mcp.stdout.readline()
        if not line:
            raise SystemExit("custody mcp closed its output")
        reply = json.loads(line)
        if reply.get("id") == msg["id"]:
            return reply


rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": client_name, "version": "1"}})
rpc("notifications/initialized", notify=True)
# Registered, or refused (then every tool call carries the broker's reason).
while True:
    line = mcp.stderr.readline()
    if not line or b"registered session" in line or b"not registered yet" in line:
        break

results = []
last_request = ""
for step in steps:
    if "shell" in step:
        p = subprocess.run(["sh", "-c", step["shell"]], capture_output=True, timeout=120)
        results.append({"rc": p.returncode, "stdout": p.stdout.decode(errors="replace"),
                        "stderr": p.stderr.decode(errors="replace")})
    elif "tool" in step:
        args = {k: (last_request if v == "$last" else v) for k, v in step.get("args", {}).items()}
        reply = rpc("tools/call", {"name": step["tool"], "arguments": args})
        res = reply.get("result", {})
        if "error" in reply or res.get("isError"):
            text = json.dumps(reply.get("error") or res.get("content"))
            results.append({"error": text})
        else:
            out = res.get("structuredContent", res)
            if isinstance(out, dict) and out.get("request_id"):
                last_request = out["request_id"]
            results.append(out)
    elif "sleep" in step:
        time.sleep(step["sleep"])
    elif "kill_mcp" in step:
        mcp.kill()
        mcp.wait()
        results.append({})
    elif "signal" in step:
        open(step["signal"], "w").close()
        results.append({})
    elif "wait_file" in step:
        until = time.monotonic() + 60
        while not os.path.exists(step["wait_file"]) and time.monotonic() < until:
            time.sleep(0.02)
        results.append({})
print(json.dumps(results), flush=True)
if mcp.poll() is None:
    mcp.stdin.close()
    mcp.wait(timeout=30)
