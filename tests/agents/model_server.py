#!/usr/bin/env python3
"""A scripted fake model server for real agent clients (stdlib only).

One HTTP server on 127.0.0.1 speaks three wire APIs, with SSE streaming:
  - Codex:       OpenAI Responses API   POST /v1/responses
  - Claude Code: Anthropic Messages API POST /v1/messages (+ /v1/messages/count_tokens)
  - Gemini CLI:  Gemini API             POST /v1beta/models/M:streamGenerateContent?alt=sse
                                         (+ :generateContent, :countTokens)

The "model" plays one script: find custody's tools in the tool list the client sent
(names are client-prefixed: match on the suffix; when the client defers MCP tools behind
a tool search, as Claude Code's ToolSearch and Codex's tool_search do, search for them
first), call `list_environments`, then `run`
three commands that print the secret (raw, base64, hex; each also appends its name to
runs.txt in the work directory, so the test can count how often it ran), following a
`pending` answer with `request_status` at once (no pause: custody's request_status waits
for the decision, and the test checks that this bounds the polling), then answer with a
final text. It is stateless: every reply is
derived from the conversation in the request (the tool calls and results already in it),
so retries and side requests cannot confuse it. Requests without custody's tools (title
generation, next-speaker checks, token counting...) get short, plain answers.

Every request (request line, headers, raw body) is appended to a log file, byte for byte.

Usage: model_server.py [--port N] [--log FILE]   (prints the port it listens on)
"""
import argparse
import json
import re
import shutil
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENV = "shop-dev"
# The hex dump: `xxd -p` (which wraps its output at 30 bytes a line), or where xxd is
# missing, od's hex on one line.
HEX = "xxd -p" if shutil.which("xxd") else "od -An -tx1 | tr -d ' \\n'"
# Each command appends its name to runs.txt (in the run's cwd, the client's work directory),
# so the test can count how many times each one ran.
RUNS_FILE = "runs.txt"
COMMAND_NAMES = ["raw", "base64", "hex"]
COMMANDS = [
    ["sh", "-c", f'echo raw >> {RUNS_FILE}; printf %s "$API_KEY"'],
    ["sh", "-c", f'echo base64 >> {RUNS_FILE}; printf %s "$API_KEY" | base64'],
    ["sh", "-c", f'echo hex >> {RUNS_FILE}; printf %s "$API_KEY" | ' + HEX],
]
FINAL_TEXT = "CUSTODY-AGENT-TEST-FINAL: ran the three commands; the secret stayed masked."
TOOLS = ("list_environments", "run", "request_status")
# Set by the runner for a client started under `custody agent`: after custody's runs, the
# model asks the client's own shell tool to try what a hostile agent would
# ({"tool": "Bash", "args": {...}}); the conversation then ends as usual.
SHELL_ATTACK = None
MAX_CALLS = 40  # a runaway conversation (e.g. request_status polled in a loop) ends here


# ---------------------------------------------------------------- the script

def find_tool(names, tool):
    """The client's name for custody's `tool` (e.g. mcp__custody__run), or None."""
    exact = [n for n in names if n == tool]
    pref = [n for n in names if "custody" in n and re.search(r"(^|[_.:/-])" + re.escape(tool) + "$", n)]
    return (pref or exact or [None])[0]


def suffix_of(name, names_map):
    for tool, client_name in names_map.items():
        if client_name and name == client_name:
            return tool
    for tool in TOOLS:  # a name the client sent earlier but not now
        if name == tool or "custody" in name and re.search(r"[_.:/-]" + re.escape(tool) + "$", name):
            return tool
    return name


def flat(text):
    """Tool results arrive JSON-encoded once or twice: strip the escapes for matching
    (an escaped newline becomes a newline, so that \\b still finds word starts)."""
    return re.sub(r"\\+n", "\n", text).replace("\\", "")


def status_of(result):
    t = flat(result)
    m = re.search(r'"status"\s*:\s*"([a-z_]+)"', t)
    status = m.group(1) if m else None
    rid = re.search(r'"request_id"\s*:\s*"(r-[0-9a-zA-Z]+)"', t)
    has_exit = re.search(r'"exit_code"\s*:\s*-?\d', t) is not None
    rid = rid.group(1) if rid else None
    if status is None:
        # A client that passes on only the text content (Gemini CLI) gets custody's prose.
        any_id = re.search(r"\b(r-[0-9a-f]{6,})\b", t)
        if re.search(r"\bexit code -?\d+", t):
            status, has_exit = "finished", True
        elif any_id and re.search(r"\bwas approved\b", t):
            status, rid = "approved", any_id.group(1)
        elif any_id and re.search(r"\bdenied\b|\bexpired\b", t):
            status, rid = "ended", any_id.group(1)
        elif any_id and "request_status" in t:
            status, rid = "pending", any_id.group(1)
    return status, rid, has_exit


def command_index(args):
    try:
        cmd = args.get("command")
    except AttributeError:
        return None
    return COMMANDS.index(cmd) if cmd in COMMANDS else None


def analyse(pairs, names_map):
    """pairs: [(tool suffix, args dict, result text or None)] in conversation order.

    Returns (next action, per-command final result texts) where the action is
    ("call", tool, args) or ("text", text). There is no pause anywhere: a pending request
    is followed with request_status at once, again and again while it says pending."""
    step = 0
    pending = None
    rerun = None
    last_run = None
    finals = {}
    attacked = False
    for tool, args, result in pairs:
        if result is None:
            continue
        if SHELL_ATTACK and tool == SHELL_ATTACK["tool"]:
            attacked = True
            continue
        if tool == "list_environments":
            step = max(step, 1)
            continue
        if tool not in ("run", "request_status"):
            continue
        if tool == "run":
            last_run = args
        status, rid, has_exit = status_of(result)
        idx = command_index(last_run) if last_run is not None else None
        pending = rerun = None
        if status == "pending" and rid:
            pending = rid
        elif status == "approved" and not has_exit:
            rerun = last_run
        else:
            if idx is not None:
                finals[idx] = result
                step = max(step, idx + 2)
            else:
                step += 1
    if len(pairs) >= MAX_CALLS:
        return ("text", "CUSTODY-AGENT-TEST-GAVE-UP: too many tool calls"), finals
    if pending and names_map.get("request_status"):
        return ("call", "request_status", {"request_id": pending}), finals
    if rerun is not None:
        return ("call", "run", rerun), finals
    if step == 0:
        return ("call", "list_environments", {}), finals
    if step <= len(COMMANDS):
        return ("call", "run", {"environments": [ENV], "command": COMMANDS[step - 1]}), finals
    if SHELL_ATTACK and not attacked:
        return ("call", SHELL_ATTACK["tool"], SHELL_ATTACK["args"]), finals
    return ("text", FINAL_TEXT), finals


def all_names(tools):
    """Every tool name in a client's `tools` (its shape differs per API): a recursive walk.
    A tool inside a Responses API namespace (Codex: {"type": "namespace", "name":
    "mcp__custody", "tools": [...]}) is named NAMESPACE/NAME here."""
    out = []

    def walk(o, ns=""):
        if isinstance(o, dict):
            n = o.get("name")
            if o.get("type") == "namespace" and isinstance(n, str):
                walk(o.get("tools"), n + "/")
                return
            if isinstance(n, str) and ("parameters" in o or "input_schema" in o or "parametersJsonSchema" in o
                                       or o.get("type") in ("function", "custom")):
                out.append(ns + n)
            for v in o.values():
                walk(v, ns)
        elif isinstance(o, list):
            for v in o:
                walk(v, ns)

    walk(tools)
    return out


def text_of(x):
    return x if isinstance(x, str) else json.dumps(x)


# ------------------------------------------------------- per-API conversations

def codex_conversation(body):
    calls, results = [], {}
    for item in body.get("input") or []:
        if not isinstance(item, dict):
            continue
        t = item.get("type")
        if t == "function_call":
            try:
                args = json.loads(item.get("arguments") or "{}")
            except ValueError:
                args = {}
            name = item.get("name", "")
            if item.get("namespace"):
                name = f"{item['namespace']}/{name}"
            calls.append((item.get("call_id"), name, args))
        elif t == "function_call_output":
            results[item.get("call_id")] = text_of(item.get("output"))
    return calls, results


def claude_conversation(body):
    calls, results = [], {}
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                calls.append((block.get("id"), block.get("name", ""), block.get("input") or {}))
            elif block.get("type") == "tool_result":
                results[block.get("tool_use_id")] = text_of(block.get("content"))
    return calls, results


def gemini_conversation(body):
    calls, results = [], {}
    n = 0
    unanswered = []
    for c in body.get("contents") or []:
        for part in c.get("parts") or []:
            if not isinstance(part, dict):
                continue
            if "functionCall" in part:
                fc = part["functionCall"]
                cid = fc.get("id") or f"gemini-call-{n}"
                n += 1
                calls.append((cid, fc.get("name", ""), fc.get("args") or {}))
                unanswered.append(cid)
            elif "functionResponse" in part:
                fr = part["functionResponse"]
                cid = fr.get("id")
                if cid not in unanswered:
                    # No id: the oldest open call of that name.
                    same = [u for u in unanswered
                            if any(c2[0] == u and c2[1] == fr.get("name") for c2 in calls)]
                    cid = (same or unanswered or [None])[0]
                if cid in unanswered:
                    unanswered.remove(cid)
                results[cid] = text_of(fr.get("response"))
    return calls, results


def plan(api, body):
    """(is the main conversation, action, finals, names_map) for one request body."""
    main, action, finals, names_map, _ = plan_full(api, body)
    return main, action, finals, names_map


def plan_full(api, body):
    """plan(), plus the conversation's custody tool calls: [(tool, args, result or None)]."""
    tools = body.get("tools") or []
    # Codex: tools found by a client-side tool_search come back in tool_search_output items.
    found = [i.get("tools") for i in body.get("input") or []
             if isinstance(i, dict) and i.get("type") == "tool_search_output"]
    names = all_names(tools) + all_names(found)
    names_map = {t: find_tool(names, t) for t in TOOLS}
    conv = {"codex": codex_conversation, "claude": claude_conversation,
            "gemini": gemini_conversation}[api](body)
    calls, results = conv
    search = None
    has_tool_search = any(isinstance(t, dict) and t.get("type") == "tool_search" for t in tools)
    if not names_map["run"] and api == "codex" and has_tool_search \
            and "mcp__custody" in json.dumps(body.get("input")):
        # Codex defers MCP tools (the namespace is only named in a developer message) behind
        # its client-side `tool_search`, which answers with the matching tools' schemas.
        done = any(isinstance(i, dict) and i.get("type") == "tool_search_call" for i in body.get("input") or [])
        if not done:
            query = {"query": "custody " + " ".join(TOOLS), "limit": 20}
            return True, ("tool_search", query), {}, names_map, []
    if not names_map["run"] and "ToolSearch" in names:
        # Claude Code defers MCP tools: only their names are listed (in a system
        # reminder), and ToolSearch "select:NAME,..." loads their schemas.
        deferred = sorted(set(re.findall(r"mcp__custody__[a-z_]+", json.dumps(body.get("messages")))))
        dmap = {t: find_tool(deferred, t) for t in TOOLS}
        if dmap["run"] and dmap["list_environments"]:
            names_map = dmap
            if not any(name == "ToolSearch" for _, name, _ in calls):
                search = ("call", "ToolSearch", {"query": "select:" + ",".join(v for v in dmap.values() if v)})
    pairs = [(suffix_of(name, names_map), args, results.get(cid)) for cid, name, args in calls]
    main = bool(names_map["run"] and names_map["list_environments"])
    action, finals = analyse(pairs, names_map)
    if search:
        return main, search, finals, names_map, pairs
    if action[0] == "call":
        action = ("call", names_map.get(action[1]) or action[1], action[2])
    return main, action, finals, names_map, pairs


# ------------------------------------------------------------------ responses

def sse(events):
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def codex_response(action, n):
    rid = f"resp_{n}"
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 10,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 110}
    ev = [("response.created", {"type": "response.created",
                                "response": {"id": rid, "object": "response", "status": "in_progress"}})]
    if action[0] == "tool_search":
        item = {"type": "tool_search_call", "id": f"ts_{n}", "call_id": f"search_{n}", "status": "completed",
                "execution": "client", "arguments": action[1]}
        ev.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                 "item": item}))
    elif action[0] == "call":
        item = {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": action[1],
                "arguments": json.dumps(action[2]), "status": "completed"}
        if "/" in action[1]:  # a tool in a namespace
            item["namespace"], item["name"] = action[1].rsplit("/", 1)
        ev.append(("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                  "item": dict(item, arguments="", status="in_progress")}))
        ev.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                 "item": item}))
    else:
        mid = f"msg_{n}"
        ev.append(("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                  "item": {"type": "message", "id": mid, "role": "assistant",
                                                           "status": "in_progress", "content": []}}))
        ev.append(("response.output_text.delta", {"type": "response.output_text.delta", "item_id": mid,
                                                  "output_index": 0, "content_index": 0, "delta": action[1]}))
        ev.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                 "item": {"type": "message", "id": mid, "role": "assistant",
                                                          "status": "completed",
                                                          "content": [{"type": "output_text", "text": action[1],
                                                                       "annotations": []}]}}))
    ev.append(("response.completed", {"type": "response.completed",
                                      "response": {"id": rid, "object": "response", "status": "completed",
                                                   "usage": usage}}))
    return sse(ev)


def claude_message(action, n, model):
    if action[0] == "call":
        content = [{"type": "tool_use", "id": f"toolu_{n:04d}", "name": action[1], "input": action[2]}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": action[1]}]
        stop = "end_turn"
    return {"id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 10}}


def claude_sse(msg):
    start = dict(msg, content=[], stop_reason=None)
    start["usage"] = {"input_tokens": 100, "output_tokens": 1}
    ev = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "tool_use":
            ev.append(("content_block_start", {"type": "content_block_start", "index": i,
                                               "content_block": dict(block, input={})}))
            js = json.dumps(block["input"])
            for k in range(0, len(js), 40):
                ev.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "input_json_delta",
                                                             "partial_json": js[k:k + 40]}}))
        else:
            ev.append(("content_block_start", {"type": "content_block_start", "index": i,
                                               "content_block": {"type": "text", "text": ""}}))
            ev.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                               "delta": {"type": "text_delta", "text": block["text"]}}))
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    ev.append(("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                 "usage": {"output_tokens": 10}}))
    ev.append(("message_stop", {"type": "message_stop"}))
    return sse(ev)


def fill_schema(schema, depth=0):
    """A value that fits a JSON schema (for Gemini's JSON side requests)."""
    if not isinstance(schema, dict) or depth > 8:
        return "ok"
    t = schema.get("type")
    if isinstance(t, list):
        t = t[0]
    t = (t or "").lower()
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if t == "object" or "properties" in schema:
        return {k: fill_schema(v, depth + 1) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return []
    if t == "boolean":
        return False
    if t in ("integer", "number"):
        return 0
    return "ok"


def gemini_candidate(action):
    if action[0] == "call":
        part = {"functionCall": {"name": action[1], "args": action[2]}}
    else:
        part = {"text": action[1]}
    return {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 10, "totalTokenCount": 110},
            "modelVersion": "scripted"}


# --------------------------------------------------------------------- server

class ModelServer:
    def __init__(self, log_path, port=0):
        self.log_path = log_path
        self.lock = threading.Lock()
        self.n = 0
        self.requests = []  # (n, method, path, headers dict, body bytes)
        self.times = {}  # n -> time the request arrived
        self.served = []  # (n, api, kind, action)
        self.final_served = 0
        self.log = open(log_path, "ab")
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.log.close()

    def record(self, method, path, raw_headers, body):
        with self.lock:
            self.n += 1
            n = self.n
            self.log.write(f"=== request {n} {time.time():.3f} {method} {path}\n".encode())
            self.log.write(raw_headers)
            self.log.write(f"--- body {len(body)} bytes\n".encode())
            self.log.write(body)
            self.log.write(b"\n")
            self.log.flush()
            self.requests.append((n, method, path, raw_headers, body))
            self.times[n] = time.time()
        return n

    def note(self, n, api, kind, action):
        with self.lock:
            self.served.append((n, api, kind, action))
            if kind == "main" and action[0] == "text" and action[1].startswith(FINAL_TEXT):
                self.final_served += 1

    def _handler(self):
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, code, body, ctype="application/json"):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if ctype == "text/event-stream":
                    self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                srv.record("GET", self.path, bytes(self.headers), b"")
                if "models" in self.path:
                    self._send(200, {"object": "list", "data": [], "models": []})
                else:
                    self._send(200, {})

            def do_HEAD(self):
                srv.record("HEAD", self.path, bytes(self.headers), b"")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                raw = self._body()
                n = srv.record("POST", self.path, bytes(self.headers), raw)
                body = raw
                enc = self.headers.get("Content-Encoding", "").lower()
                try:
                    if enc in ("gzip", "deflate"):
                        body = zlib.decompress(raw, 47)
                    data = json.loads(body or b"{}")
                except (ValueError, zlib.error) as e:
                    self._send(400, {"error": {"message": f"scripted model: bad body ({enc}): {e}"}})
                    return
                path = self.path.split("?")[0]
                try:
                    self.route(n, path, data)
                except BrokenPipeError:
                    pass

            def route(self, n, path, data):
                if path.endswith("/responses"):
                    main, action, _, _ = plan("codex", data)
                    if not main:
                        action = ("text", "ok")
                    srv.note(n, "codex", "main" if main else "side", action)
                    self._send(200, codex_response(action, n), "text/event-stream")
                elif path.endswith("/messages/count_tokens"):
                    srv.note(n, "claude", "count_tokens", None)
                    self._send(200, {"input_tokens": 100})
                elif path.endswith("/messages"):
                    main, action, _, _ = plan("claude", data)
                    if not main:
                        action = ("text", "ok")
                    srv.note(n, "claude", "main" if main else "side", action)
                    msg = claude_message(action, n, data.get("model", "scripted"))
                    if data.get("stream"):
                        self._send(200, claude_sse(msg), "text/event-stream")
                    else:
                        self._send(200, msg)
                elif path.endswith(":countTokens"):
                    srv.note(n, "gemini", "count_tokens", None)
                    self._send(200, {"totalTokens": 100})
                elif path.endswith(":streamGenerateContent") or path.endswith(":generateContent"):
                    main, action, _, _ = plan("gemini", data)
                    gc = data.get("generationConfig") or data.get("config") or {}
                    schema = gc.get("responseJsonSchema") or gc.get("responseSchema")
                    if not main:
                        action = ("text", json.dumps(fill_schema(schema)) if schema else "ok")
                    srv.note(n, "gemini", "main" if main else "side", action)
                    resp = gemini_candidate(action)
                    if path.endswith(":streamGenerateContent"):
                        self._send(200, f"data: {json.dumps(resp)}\r\n\r\n".encode(), "text/event-stream")
                    else:
                        self._send(200, resp)
                else:
                    srv.note(n, "?", "unknown", None)
                    self._send(404, {"error": {"message": f"scripted model: no route {path}"}})

        return H


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", default="model-requests.log")
    a = ap.parse_args()
    s = ModelServer(a.log, a.port).start()
    print(s.port, flush=True)
    try:
        s.thread.join()
    except KeyboardInterrupt:
        s.stop()


if __name__ == "__main__":
    sys.exit(main())
