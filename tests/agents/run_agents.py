#!/usr/bin/env python3
"""Real agent clients (Codex, Claude Code, Gemini CLI) against `custody mcp`.

Each client runs headless, pointed at a scripted fake model (model_server.py) on
127.0.0.1 that makes it call custody's tools: list_environments, then `run` of three
commands that print a secret (raw, base64, hex) and append their name to runs.txt, then
a final answer. A thread of this process (outside the client's process tree) approves
each request with the real `custody approve`; it holds the second one back past the
approval wait, so `run` answers "pending" and the model follows with `request_status`
(at once, with no pause). Then: the config that `custody mcp install CLIENT` wrote was
enough (nothing is added by hand), the masked marker reached the model for each command,
no form of the value appears in any byte the client sent, in any file under its home or
work dir, in the audit log or daemon.log, each command ran exactly once, request_status
was not polled in a loop, the approvals are audited as ours, the client exited 0 with
the final answer, and no process was left behind.

The client's config comes only from the real `custody mcp install CLIENT`. The runner
adds the harness (fake model, base URLs, auth type, workspace trust for Gemini CLI,
CUSTODY_MCP_APPROVAL_WAIT), all outside the client's HOME or as command-line/env
settings, and never a permission, approval or policy setting.

Usage: run_agents.py PATH_TO_CUSTODY AGENTS_DIR [codex|claude|gemini ...]
Prints one line per check, a per-client timing line and, last, 'N passed, N failed';
exits 1 if any check failed (130 if interrupted).
"""
import atexit
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
from datetime import datetime

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_server  # noqa: E402

CUSTODY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ""
AGENTS = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else ""
BIN = os.path.join(AGENTS, "node_modules", ".bin")
PASS = "agent-clients passphrase"
PIN = "731902"
ENV = model_server.ENV
CLIENT_TIMEOUT = 60  # a normal run takes 10-15 s
# `run` (and `request_status`) wait this long for an approval before answering
# "pending"; the approver holds back the second command's request for longer, so every
# client also goes through run -> pending -> request_status, and request_status is
# answered by the approval 3 s into its wait.
APPROVAL_WAIT = "6s"
HOLD_BACK = 9.0
MAX_STATUS_CALLS = 3  # request_status calls per pending request
MARKER = "[masked:API_KEY]"
PROMPT = ("Use the custody MCP tools: list the environments, then run the commands that print "
          "API_KEY in shop-dev, and tell me what you saw.")
# Tools the scripted model calls; `custody mcp install` must let the client call them.
TOOLS = model_server.TOOLS

results = {"passed": 0, "failed": 0}
# What to clean up, even on failure or Ctrl-C: vaults (brokers) and client processes.
LIVE = {"vaults": [], "clients": []}


def check(client, name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    line = f"{'ok  ' if ok else 'FAIL'} [{client}] {name}"
    if not ok and detail:
        line += ": " + str(detail)[:800]
    print(line, flush=True)
    return ok


def say(client, text):
    for line in str(text).rstrip().splitlines():
        print(f"     [{client}] {line}", flush=True)


def forms(value: str):
    """The value and the encodings a leak would most likely take, whole and in pieces."""
    b = value.encode()
    b64 = base64.b64encode(b).decode()
    hx = b.hex()
    out = {
        "exact": value,
        "hex": hx,
        "HEX": hx.upper(),
        "base64": b64,
        "base64-unpadded": b64.rstrip("="),
        "base64url": base64.urlsafe_b64encode(b).decode(),
        "base64url-unpadded": base64.urlsafe_b64encode(b).decode().rstrip("="),
        "url-quoted": urllib.parse.quote(value, safe=""),
        "json-escaped": json.dumps(value)[1:-1],
        # Fragments a wrapped or partial encoding still shows.
        "base64 of the first 12 bytes": b64[:16],
        "hex of the first 12 bytes": hx[:24],
        "HEX of the first 12 bytes": hx.upper()[:24],
        "the first 16 characters": value[:16],
        "the last 16 characters": value[-16:],
    }
    # base64 of the value starting at another byte offset mod 3 (inside a longer text).
    for k in (1, 2):
        out[f"base64 from byte {k}, first 16 digits"] = base64.b64encode(b[k:]).decode()[:16]
    # Every line of the wrapped forms: GNU base64 wraps at 76 columns, xxd -p at 60.
    for i in range(0, len(b64), 76):
        out[f"base64 line {i // 76 + 1} (76 columns), first 16 digits"] = b64[i:i + 76][:16]
    for i in range(0, len(hx), 60):
        out[f"xxd -p line {i // 60 + 1} (60 columns), first 24 digits"] = hx[i:i + 60][:24]
    return out


def scan_bytes(data: bytes, fs):
    return sorted({k for k, v in fs.items() if v.encode() in data})


def scan_tree(root, fs):
    hits = []
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                with open(p, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            found = scan_bytes(data, fs)
            if found:
                hits.append(f"{os.path.relpath(p, root)}: {', '.join(found)}")
    return hits


def snapshot(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def processes_of(marker):
    """Processes whose command line or environment names `marker` (a run's unique temp
    directory): the broker, `custody mcp`, the client and its helpers of that run."""
    found, me, mark = [], os.getpid(), marker.encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if cmd and (mark in cmd or mark in env):
            found.append((int(pid), cmd.replace(b"\0", b" ").decode(errors="replace").strip()[:160]))
    return found


def kill_all(pids, grace=3.0):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.time() + grace
    while time.time() < end and any(os.path.exists(f"/proc/{p}") and not zombie(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class Vault:
    """A throwaway vault and broker, the client's own HOME, and a work directory."""

    def __init__(self, client):
        self.client = client
        # Under AGENTS_DIR, not /tmp: Codex refuses to set up its helpers under /tmp and warns.
        runs = f"{AGENTS}/runs"
        os.makedirs(runs, exist_ok=True)
        for old in os.listdir(runs):  # keep only the latest run of each client
            if old.startswith(f"{client}-"):
                shutil.rmtree(os.path.join(runs, old), ignore_errors=True)
        self.tmp = tempfile.mkdtemp(prefix=f"{client}-", dir=runs)
        self.home = f"{self.tmp}/home"
        self.work = f"{self.tmp}/work"
        self.custody_home = f"{self.tmp}/custody"
        self.runtime = f"{self.tmp}/run"
        for d in (self.home, self.work):
            os.makedirs(d)
        # A repository of its own, so the client does not pick up the one around target/.
        subprocess.run(["git", "init", "-q", self.work], check=False, capture_output=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("XDG_", "OPENAI", "ANTHROPIC", "CLAUDE", "CODEX", "GEMINI",
                                    "GOOGLE", "VERTEX", "CUSTODY", "AWS_", "NODE_OPTIONS", "TMUX"))}
        env.update(HOME=self.home, CUSTODY_HOME=self.custody_home, CUSTODY_RUNTIME_DIR=self.runtime,
                   PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", NO_COLOR="1",
                   TERM="dumb", CI="1", USER=os.environ.get("USER", "root"))
        self.env = env
        # 72 characters: longer than 57 bytes, so `base64` wraps it (76 columns), and than
        # 30 bytes, so `xxd -p` does (60 columns, 3 lines).
        self.value = "ck_live_" + secrets.token_urlsafe(48)
        self.broker_pid = None
        self.torn_down = False
        LIVE["vaults"].append(self)

    def custody(self, *args, stdin="", check_rc=True, env=None, timeout=60):
        p = subprocess.run([CUSTODY, *args], input=stdin.encode(), env=env or self.env,
                           capture_output=True, cwd=self.work, timeout=timeout)
        if check_rc and p.returncode != 0:
            raise RuntimeError(f"custody {' '.join(args)}: rc {p.returncode}: {p.stderr.decode()}")
        return p

    def setup(self):
        self.custody("init", "--passphrase-stdin", "--pin-stdin", "--insecure-fast-kdf",
                     stdin=f"{PASS}\n{PIN}\n")
        self.custody("unlock", "--passphrase-stdin", stdin=PASS + "\n")
        try:
            self.broker_pid = json.loads(self.custody("--json", "status").stdout).get("pid")
        except ValueError:
            pass
        self.custody("env", "create", ENV, "-d", "the web shop, dev stage", "--pin-stdin",
                     stdin=f"{PIN}\n")
        # The broker is unlocked: `set` goes through it; the PIN proves the change
        # (first line of stdin), the value follows.
        self.custody("set", ENV, "API_KEY", "-d", "the shop's payment API key", "--pin-stdin",
                     stdin=f"{PIN}\n{self.value}")

    def teardown(self):
        """`custody lock`, then SIGTERM to the broker (SIGKILL after 3 s). Idempotent."""
        if self.torn_down:
            return
        self.torn_down = True
        try:
            self.custody("lock", check_rc=False, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.broker_pid:
            kill_all([self.broker_pid])


class Approver(threading.Thread):
    """Approves every pending request with `custody approve ID --once --pin-stdin`, from
    this process: outside the agent client's process tree. Holds back the request for
    the second command, so that `run` answers "pending" first."""

    def __init__(self, vault):
        super().__init__(daemon=True)
        self.v = vault
        self.stop = threading.Event()
        self.seen = {}  # id -> first seen time
        self.approved = []  # (id, argv, pid of `custody approve`, rc)
        self.errors = []
        self.sessions = {}  # (client name, version) -> seen in `custody status`
        self.requesters = {}  # request id -> requester as `approve --list` showed it
        self.ticks = 0

    def run(self):
        while not self.stop.is_set():
            self.ticks += 1
            if self.ticks % 3 == 1:
                try:
                    st = json.loads(self.v.custody("--json", "status", check_rc=False).stdout or b"{}")
                    for sess in st.get("sessions") or []:
                        key = f"{sess.get('client_name') or sess.get('client')} {sess.get('client_version') or ''}"
                        self.sessions[key.strip()] = sess
                except (ValueError, OSError, subprocess.TimeoutExpired):
                    pass
            try:
                p = self.v.custody("--json", "approve", "--list", check_rc=False)
                pending = json.loads(p.stdout or b"[]") if p.returncode == 0 else []
            except (ValueError, OSError, subprocess.TimeoutExpired) as e:
                self.errors.append(repr(e))
                pending = []
            now = time.time()
            for req in pending:
                rid = req.get("id")
                first = self.seen.setdefault(rid, now)
                self.requesters[rid] = req.get("requester")
                argv = req.get("argv") or []
                if argv == model_server.COMMANDS[1] and now - first < HOLD_BACK:
                    continue
                try:
                    a = subprocess.Popen([CUSTODY, "approve", rid, "--once", "--pin-stdin"], env=self.v.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=self.v.work)
                    out, err = a.communicate(PIN.encode() + b"\n", timeout=30)
                except (OSError, subprocess.TimeoutExpired) as e:
                    self.errors.append(f"approve {rid}: {e!r}")
                    continue
                self.approved.append((rid, argv, a.pid, a.returncode))
                if a.returncode != 0:
                    self.errors.append(f"approve {rid}: rc {a.returncode}: {err.decode().strip()}")
            self.stop.wait(0.3)


# ------------------------------------------------------------------ clients
#
# Each prepare_* function returns (argv, harness description). It sets only what the
# fake model and a headless run need, through the command line, the environment or a
# file outside the client's HOME: nothing about permissions, approvals or policies.

def prepare_codex(v, url):
    """`codex exec`, CODEX_HOME in the temp home. The fake model (harness) is set with -c
    overrides, so config.toml holds only the installer's entry."""
    codex_home = f"{v.home}/.codex"
    v.env["CODEX_HOME"] = codex_home
    v.env["SCRIPTED_API_KEY"] = "scripted-model-key"
    harness = [
        # A model Codex has metadata for (else it warns "Model metadata ... not found"). With
        # it, Codex defers MCP tools behind its client-side tool_search, as with the real
        # model. (Its default model uses "code mode" instead, where MCP tools are called
        # from JavaScript in an `exec` tool: the scripted model does not speak that.)
        'model="gpt-5.5"',
        'model_provider="scripted"',
        'model_providers.scripted.name="scripted model"',
        f'model_providers.scripted.base_url="{url}/v1"',
        'model_providers.scripted.wire_api="responses"',
        'model_providers.scripted.env_key="SCRIPTED_API_KEY"',
        'model_providers.scripted.stream_max_retries=0',
        'model_providers.scripted.request_max_retries=0',
        # Codex starts MCP servers with a cleared environment: only the entry's env counts.
        f'mcp_servers.custody.env.CUSTODY_MCP_APPROVAL_WAIT="{APPROVAL_WAIT}"',
    ]
    argv = ["codex", "exec", "--skip-git-repo-check", "--color", "never", "-C", v.work]
    for h in harness:
        argv += ["-c", h]
    argv += [PROMPT]
    return argv, [f"-c {h}" for h in harness] + ["CODEX_HOME=$HOME/.codex, SCRIPTED_API_KEY (env)"]


def prepare_claude(v, url):
    """`claude -p`, with no permission flag (--dangerously-skip-permissions is refused as
    root anyway): the installer's permissions.allow rules must do."""
    v.env.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="scripted-model-key",
                 DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1",
                 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                 # Claude Code passes its environment on to stdio MCP servers.
                 CUSTODY_MCP_APPROVAL_WAIT=APPROVAL_WAIT)
    harness = ["ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY (env)",
               "DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 "
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 (env)",
               f"CUSTODY_MCP_APPROVAL_WAIT={APPROVAL_WAIT} (env, inherited by custody mcp)"]
    return ["claude", "-p", PROMPT], harness


def insecure_ancestor(path):
    """The first ancestor of `path` that others may write to (Gemini CLI skips a system
    settings file below one, e.g. in a clone under /tmp), or None."""
    p = os.path.dirname(os.path.abspath(path))
    while True:
        if os.stat(p).st_mode & 0o022:
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


_SETTINGS_DIRS = []


def settings_dir(run_dir):
    """`run_dir`, or (when one of its ancestors is writable by others) a private directory
    under the invoking user's own ~/.cache, removed when the runner exits."""
    if insecure_ancestor(os.path.join(run_dir, "x")) is None:
        return run_dir
    base = os.path.join(os.path.expanduser("~"), ".cache")
    os.makedirs(base, mode=0o700, exist_ok=True)
    d = tempfile.mkdtemp(prefix="custody-agent-tests-", dir=base)
    if not _SETTINGS_DIRS:
        atexit.register(lambda: [shutil.rmtree(x, ignore_errors=True) for x in _SETTINGS_DIRS])
    _SETTINGS_DIRS.append(d)
    return d


def prepare_gemini(v, url):
    """`gemini -p`. Harness settings go in a system settings file outside HOME, so ~/.gemini
    holds only what the installer wrote."""
    # With GOOGLE_GEMINI_BASE_URL set and no auth type chosen, Gemini CLI picks "gateway"
    # auth, which headless mode rejects ("Invalid auth method selected").
    system = {"security": {"auth": {"selectedType": "gemini-api-key"}},
              "privacy": {"usageStatisticsEnabled": False},
              "telemetry": {"enabled": False},
              "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}}
    path = f"{settings_dir(v.tmp)}/gemini-system-settings.json"
    with open(path, "w") as f:
        json.dump(system, f, indent=2)
    v.env.update(GEMINI_API_KEY="scripted-model-key", GOOGLE_GEMINI_BASE_URL=url,
                 GEMINI_CLI_SYSTEM_SETTINGS_PATH=path, GEMINI_CLI_TRUST_WORKSPACE="true",
                 CUSTODY_MCP_APPROVAL_WAIT=APPROVAL_WAIT)
    harness = ["GEMINI_API_KEY, GOOGLE_GEMINI_BASE_URL (env)",
               f"GEMINI_CLI_SYSTEM_SETTINGS_PATH (outside HOME): {json.dumps(system)}",
               "GEMINI_CLI_TRUST_WORKSPACE=true (env; else headless exits 55: \"Gemini CLI is not "
               "running in a trusted directory\"; `custody mcp install gemini` says to set it)",
               f"CUSTODY_MCP_APPROVAL_WAIT={APPROVAL_WAIT} (env, inherited by custody mcp)"]
    return ["gemini", "-p", PROMPT, "--model", "gemini-2.5-flash"], harness


def shell_attack(v):
    """What a hostile agent's own shell tries against custody and the human: read the vault,
    write the policy, create ~/.bashrc, signal the broker, count the processes it can see.
    Each line says DENIED-... or what worked; nothing is changed (files are opened for
    append, empty)."""
    return "; ".join([
        f'(cat "{v.custody_home}/vault.db" >/dev/null) 2>/dev/null && echo READ-vault || echo DENIED-READ-vault',
        f'(: >> "{v.custody_home}/policy.toml") 2>/dev/null && echo WROTE-policy || echo DENIED-WRITE-policy',
        f'(: >> "{v.home}/.bashrc") 2>/dev/null && echo WROTE-bashrc || echo DENIED-WRITE-bashrc',
        f'kill -CONT {v.broker_pid} 2>/dev/null && echo SIGNALLED-broker || echo DENIED-SIGNAL-broker',
        "echo PROCESSES-SEEN=$(ls /proc | grep -c '^[0-9]')",
    ])


SHELL_ATTACK_WORKED = ("READ-vault", "WROTE-policy", "WROTE-bashrc", "SIGNALLED-broker")
SHELL_ATTACK_DENIED = ("DENIED-READ-vault", "DENIED-WRITE-policy", "DENIED-WRITE-bashrc",
                       "DENIED-SIGNAL-broker")


def prepare_claude_sandboxed(v, url):
    """`custody agent -- claude -p`: Claude Code in custody's sandbox. The harness lets the
    model use Claude's own Bash tool (`--allowedTools Bash`), through which it tries the attacks in shell_attack()."""
    argv, harness = prepare_claude(v, url)
    model_server.SHELL_ATTACK = {"tool": "Bash", "args": {
        "command": shell_attack(v), "description": "Look around custody's files"}}
    harness.append("--allowedTools Bash (Claude's own shell, for the model's attack; not custody's tool)")
    return [CUSTODY, "agent", "--"] + argv + ["--allowedTools", "Bash"], harness


def sandboxed(prepare):
    """`custody agent -- CLIENT …`: the client's own run, in custody's sandbox."""
    def prep(v, url):
        argv, harness = prepare(v, url)
        return [CUSTODY, "agent", "--"] + argv, harness
    return prep


PREPARE = {"codex": prepare_codex, "claude": prepare_claude, "gemini": prepare_gemini,
           "claude-sandboxed": prepare_claude_sandboxed,
           "codex-sandboxed": sandboxed(prepare_codex),
           "gemini-sandboxed": sandboxed(prepare_gemini)}
# The client behind each run (its API, its installer target).
BASE = {"claude-sandboxed": "claude", "codex-sandboxed": "codex", "gemini-sandboxed": "gemini"}

# Command-line settings that would let a client call tools without the installer's
# config: none may appear in the argv the harness builds.
FORBIDDEN_FLAG = re.compile(r"^(-a|-y|-s|--(dangerously\S*|yolo|approval-mode|allowed-?tools|allowedTools|"
                            r"permission-mode|full-auto|ask-for-approval|sandbox|skip-permissions\S*|"
                            r"allowed-mcp-server-names|mcp-config|settings))(=|$)")
FORBIDDEN_OVERRIDE = re.compile(r"approval_(mode|policy)|sandbox|\.tools\b|trust|permission", re.I)


def argv_problems(argv):
    # The sandboxed run's harness lets the model use Claude's own Bash tool (not custody's).
    argv = [a for i, a in enumerate(argv)
            if not (a == "--allowedTools" and argv[i + 1:i + 2] == ["Bash"])
            and not (a == "Bash" and i > 0 and argv[i - 1] == "--allowedTools")]
    bad = [a for a in argv if FORBIDDEN_FLAG.match(a)]
    bad += [argv[i + 1] for i, a in enumerate(argv[:-1])
            if a == "-c" and FORBIDDEN_OVERRIDE.search(argv[i + 1].split("=", 1)[0])]
    return bad


def installer_headless_config(client, home):
    """What `custody mcp install CLIENT` wrote for headless use: (description, problems)."""
    problems = []
    try:
        if client == "codex":
            with open(f"{home}/.codex/config.toml", "rb") as f:
                entry = tomllib.load(f).get("mcp_servers", {}).get("custody", {})
            mode = entry.get("default_tools_approval_mode")
            if mode != "approve":
                problems.append(f"[mcp_servers.custody] default_tools_approval_mode is {mode!r}, not \"approve\"")
            return f"~/.codex/config.toml [mcp_servers.custody] default_tools_approval_mode = {mode!r}", problems
        if client == "claude":
            with open(f"{home}/.claude/settings.json") as f:
                allow = (json.load(f).get("permissions") or {}).get("allow") or []
            missing = [f"mcp__custody__{t}" for t in TOOLS if f"mcp__custody__{t}" not in allow]
            if missing:
                problems.append(f"permissions.allow lacks {missing}")
            ours = [a for a in allow if a.startswith("mcp__custody")]
            return f"~/.claude/settings.json permissions.allow: {len(ours)} custody tools", problems
        if client == "gemini":
            with open(f"{home}/.gemini/policies/custody.toml", "rb") as f:
                rules = tomllib.load(f).get("rule", [])
            allowed = {r.get("toolName") for r in rules
                       if r.get("mcpName") == "custody" and r.get("decision") == "allow"}
            missing = [t for t in TOOLS if t not in allowed]
            if missing:
                problems.append(f"no allow rule for {missing}")
            return f"~/.gemini/policies/custody.toml: {len(allowed)} allow rules (mcpName = \"custody\")", problems
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        problems.append(repr(e))
        return "(unreadable)", problems
    return "", [f"unknown client {client}"]


def run_client(client, timing):
    t0 = time.time()
    v = Vault(client)
    say(client, f"temp dir {v.tmp}")
    server = model_server.ModelServer(f"{v.tmp}/model-requests.log").start()
    url = f"http://127.0.0.1:{server.port}"
    approver = None
    p = None
    took = None
    try:
        v.setup()
        before = snapshot(v.home)
        inst = v.custody("mcp", "install", BASE.get(client, client))
        say(client, "custody mcp install " + BASE.get(client, client) + ":\n" + inst.stdout.decode() + inst.stderr.decode())
        installed = snapshot(v.home)
        wrote = sorted(k for k in installed if before.get(k) != installed[k])
        say(client, f"files under HOME written by the installer: {wrote}")
        argv, harness = PREPARE[client](v, url)
        for h in harness:
            say(client, f"harness (fake model, headless run; not custody's business): {h}")
        home_at_start = snapshot(v.home)

        approver = Approver(v)
        approver.start()
        out_path, err_path = f"{v.tmp}/client.stdout", f"{v.tmp}/client.stderr"
        started = time.time()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            p = subprocess.Popen(argv, env=v.env, cwd=v.work, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, start_new_session=True)
            LIVE["clients"].append(p)
            try:
                rc = p.wait(timeout=CLIENT_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc = None
        took = time.time() - started
        approver.stop.set()
        approver.join(5)
        with open(out_path, "rb") as f:
            stdout = f.read()
        with open(err_path, "rb") as f:
            stderr = f.read()
        say(client, f"client exited {rc} after {took:.1f}s; {server.n} requests to the model")
        for n, api, kind, action in server.served:
            if action is None:
                desc = ""
            elif action[0] == "call":
                desc = f"call {action[1]} {json.dumps(action[2])}"
            elif action[0] == "text":
                desc = f"text {action[1][:60]!r}"
            else:
                desc = f"{action[0]} {json.dumps(action[1])}"
            say(client, f"  model request {n} (+{server.times[n] - started:.1f}s): {api} {kind} {desc}")

        lines = list(dict.fromkeys(stderr.decode(errors="replace").splitlines()))
        say(client, f"client stderr ({len(lines)} distinct lines, first 40):")
        for line in lines[:40]:
            say(client, "  | " + line[:300])
        try:
            grants = json.loads(v.custody("--json", "grants", check_rc=False).stdout or b"null")
        except ValueError as e:
            grants = repr(e)
        extra = client_extras(client, v)
        setup = {"wrote": wrote, "before": before, "installed": installed, "home_at_start": home_at_start,
                 "argv": argv, "grants": grants}
        verify(client, v, server, approver, rc, took, stdout, stderr, extra, setup)
        if client in SANDBOXED:
            verify_sandbox(client, v, server, approver)
    finally:
        model_server.SHELL_ATTACK = None
        if approver:
            approver.stop.set()
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        server.stop()
        v.teardown()
        timing[client] = (time.time() - t0, took)
    # Everything this run started is gone once the vault is locked and the broker stopped
    # (the client exited; `custody mcp` ends with its client's stdin).
    time.sleep(0.5)
    left = processes_of(v.tmp)
    check(client, "no process left behind (broker, custody mcp, client, helpers)", not left, left)
    kill_all([pid for pid, _ in left])
    timing[client] = (time.time() - t0, took)
    say(client, f"done in {time.time() - t0:.1f}s")


def client_extras(client, v):
    """What the client itself says about the custody server (listings, startup warnings)."""
    extra = {}
    argv = {"codex": ["codex", "mcp", "list"], "claude": ["claude", "mcp", "list"],
            "gemini": ["gemini", "mcp", "list"]}[BASE.get(client, client)]
    try:
        p = subprocess.run(argv, env=v.env, cwd=v.work, capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL, start_new_session=True)
        extra["mcp list"] = (p.stdout + p.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired:
        extra["mcp list"] = "(timed out after 30s)"
    say(client, f"{' '.join(argv)}:\n" + extra["mcp list"])
    return extra


def main_conversation(client, server):
    """The last request of the main conversation: (body, finals, names, custody calls)."""
    client = BASE.get(client, client)
    for n, method, path, headers, body in reversed(server.requests):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            continue
        main, _, finals, names, pairs = model_server.plan_full(client, data)
        if main:
            return data, finals, names, pairs
    return None, {}, {}, []


def audit_time(r):
    return datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()


# A client's refusal of a tool call, as the model would see it.
REFUSAL = re.compile(r"requires approval|approval policy is never|haven't granted|have not granted|"
                     r"not allowed|denied by policy|user rejected|rejected by|unsupported call|"
                     r"Tool execution denied|permission to use", re.I)


def custody_answered(tool, result):
    """Did this tool result come from custody (not a refusal by the client)?"""
    if result is None:
        return False
    t = model_server.flat(result)
    if REFUSAL.search(t):
        return False
    if tool == "list_environments":
        return ENV in t
    return model_server.status_of(result)[0] is not None


def verify(client, v, server, approver, rc, took, stdout, stderr, extra, setup):
    fs = forms(v.value)
    data, finals, names, pairs = main_conversation(client, server)
    offered = bool(names.get("run") and names.get("list_environments") and names.get("request_status"))

    # 1. The installer's config alone let the headless client call custody's tools.
    desc, problems = installer_headless_config(BASE.get(client, client), v.home)
    if setup["home_at_start"] != setup["installed"]:
        changed = sorted(set(setup["home_at_start"]) ^ set(setup["installed"]) |
                         {k for k in setup["installed"] if setup["home_at_start"].get(k) != setup["installed"][k]})
        problems.append(f"HOME changed between the install and the client's start: {changed}")
    if setup["before"]:
        problems.append(f"HOME was not empty before the install: {sorted(setup['before'])}")
    bad = argv_problems(setup["argv"])
    if bad:
        problems.append(f"permission settings on the command line: {bad}")
    if not offered:
        problems.append(f"the client did not offer custody's tools to the model: {names}")
    calls = [(t, a, r) for t, a, r in pairs if t in TOOLS]
    refused = [(t, (r or "(no result)")[:300]) for t, a, r in calls if not custody_answered(t, r)]
    if refused:
        problems.append(f"tool calls without custody's answer: {refused}")
    used = sorted({t for t, _, _ in calls})
    if used != sorted(TOOLS):
        problems.append(f"custody tools called: {used}, expected {sorted(TOOLS)}")
    say(client, f"installer wrote for headless use: {desc}")
    check(client, "installer config alone lets the headless client call custody's tools "
                  f"({len(calls)} calls of {used} answered by custody)", not problems, "; ".join(problems))

    check(client, f"the client offered custody's tools to the model ({names})", offered, names)
    for i, cmd in enumerate(model_server.COMMANDS):
        res = finals.get(i)
        check(client, f"the masked marker {MARKER} reached the model for {cmd[2]!r}",
              res is not None and MARKER in model_server.flat(res),
              "no result" if res is None else res[:600])

    # 2. request_status: followed at once (no pause in the model), bounded by custody's wait.
    rs_name = names.get("request_status")
    status_calls = {}
    for t, a, r in pairs:
        if t == "request_status":
            status_calls.setdefault((a or {}).get("request_id"), []).append(r)
    check(client, f"a pending run was followed with request_status ({len(status_calls)} pending request(s))",
          bool(status_calls), "no request_status call")
    main_served = sorted((n, action) for n, api, kind, action in server.served if kind == "main")
    waits = []
    for k, (n, action) in enumerate(main_served):
        if action and action[0] == "call" and action[1] == rs_name and k + 1 < len(main_served):
            waits.append(round(server.times[main_served[k + 1][0]] - server.times[n], 1))
    counts = {rid: len(rs) for rid, rs in status_calls.items()}
    check(client, f"request_status was not polled in a loop (calls per pending request {counts}, "
                  f"each answered after {waits} s; at most {MAX_STATUS_CALLS})",
          bool(counts) and all(c <= MAX_STATUS_CALLS for c in counts.values()), counts)

    # Leaks: every recorded byte, transcript file, audit.log, daemon.log.
    with open(f"{v.tmp}/model-requests.log", "rb") as f:
        log = f.read()
    where = {}
    for n, _, _, headers, body in server.requests:
        for form in scan_bytes(headers + body, fs):
            where.setdefault(form, n)
    check(client, f"no form of the value in the {len(log)} bytes ({server.n} requests) sent to the model",
          not scan_bytes(log, fs),
          ", ".join(f"{f} (first in request {where.get(f, '?')})" for f in scan_bytes(log, fs)))
    check(client, "no form of the value in the client's stdout/stderr",
          not scan_bytes(stdout + stderr, fs), scan_bytes(stdout + stderr, fs))
    hits = scan_tree(v.home, fs) + scan_tree(v.work, fs)
    check(client, "no form of the value in any file under the client's HOME and work dir", not hits, hits)
    with open(f"{v.custody_home}/audit.log", "rb") as f:
        audit = f.read()
    check(client, "no form of the value in the audit log", not scan_bytes(audit, fs), scan_bytes(audit, fs))
    hits = scan_tree(v.runtime, fs) + scan_tree(v.custody_home, fs)
    check(client, "no form of the value in custody's runtime dir (daemon.log) or home", not hits, hits)

    recs = [json.loads(line) for line in audit.splitlines() if line.strip()]
    events = [(r, r.get("event", {})) for r in recs]
    approvals = [e for _, e in events if e.get("type") == "approval"]
    ours = {pid for _, _, pid, rc_ in approver.approved if rc_ == 0}
    check(client, f"the approvals in the audit log came from the approver ({len(approvals)} approvals)",
          len(approvals) == 3 and all(a.get("approver_pid") in ours for a in approvals),
          {"audit": approvals, "approver": approver.approved, "errors": approver.errors})
    ends = [e for _, e in events if e.get("type") == "lease_end"]
    check(client, f"three leases ran and masked ({[e.get('mask_counts') for e in ends]})",
          len(ends) == 3 and all((e.get("mask_counts") or {}).get("API_KEY", 0) >= 1 for e in ends), ends)

    # 2. Each command ran exactly once: runs.txt in the work dir, and lease_start per request.
    try:
        with open(f"{v.work}/{model_server.RUNS_FILE}") as f:
            ran = f.read().split()
    except OSError:
        ran = []
    ran_counts = {name: ran.count(name) for name in model_server.COMMAND_NAMES}
    requests = {e["request_id"]: (r, e) for r, e in events if e.get("type") == "request"}
    grant_req = {e["grant_id"]: e["request_id"] for _, e in events if e.get("type") == "grant"}
    starts = {}
    for r, e in events:
        if e.get("type") == "lease_start":
            starts.setdefault(grant_req.get(e.get("grant_id")), []).append((r, e))
    per_cmd = {}
    for rid, (_, e) in requests.items():
        name = model_server.COMMAND_NAMES[model_server.COMMANDS.index(e["argv"])] \
            if e.get("argv") in model_server.COMMANDS else repr(e.get("argv"))
        per_cmd.setdefault(name, []).append(len(starts.get(rid, [])))
    check(client, f"the command behind each request ran exactly once (runs.txt {ran_counts}; "
                  f"lease_start per request {per_cmd})",
          all(c == 1 for c in ran_counts.values()) and len(ran) == 3
          and per_cmd == {name: [1] for name in model_server.COMMAND_NAMES}
          and None not in starts,
          {"runs.txt": ran, "lease_starts per request": per_cmd, "unmatched": starts.get(None)})

    # The approval of the held-back (pending) request started its run at once, and the
    # once-grants are spent.
    held = [rid for rid, (_, e) in requests.items() if e.get("argv") == model_server.COMMANDS[1]]
    gap = None
    if len(held) == 1 and len(starts.get(held[0], [])) == 1:
        appr = [r for r, e in events if e.get("type") == "approval" and e.get("request_id") == held[0]]
        if appr:
            gap = audit_time(starts[held[0]][0][0]) - audit_time(appr[0])
    # `custody --json grants` lists the grants in force (uses_left null: unlimited).
    grants = setup["grants"]
    left = [g for g in (grants if isinstance(grants, list) else [grants])
            if not (isinstance(g, dict) and g.get("uses_left") == 0)]
    check(client, "the approval of the pending request started its run at once, and no once-grant was "
                  f"left unspent (approval -> lease_start {gap if gap is None else round(gap, 3)} s; "
                  f"grants in force after the run: {len(left)})",
          gap is not None and 0 <= gap < 1.0 and not left,
          {"held": held, "gap": gap, "grants": setup["grants"]})

    check(client, f"`custody status` listed the agent session ({sorted(approver.sessions)})",
          bool(approver.sessions), "no session seen")
    check(client, f"the client exited 0 within {CLIENT_TIMEOUT}s (rc {rc}, {took:.0f}s)", rc == 0,
          (stderr or stdout).decode(errors="replace")[-1500:])
    check(client, "the model's final turn was served and the client printed the final answer",
          server.final_served >= 1 and model_server.FINAL_TEXT.encode() in stdout,
          f"final served {server.final_served}; stdout {stdout[-500:]!r}")

    # Schema warnings: what the client printed about custody's tool schemas (Claude Code
    # and Gemini CLI validate them with Ajv, which warns about formats it does not know).
    warn_src = stderr.decode(errors="replace") + "\n" + "\n".join(extra.values())
    warnings = [line for line in warn_src.splitlines()
                if re.search(r"\bformat\b|unknown format|strict mode|schema", line, re.I)]
    distinct = list(dict.fromkeys(warnings))
    fmts = sorted(set(re.findall(rb'\\*"format\\*"\s*:\s*\\*"([a-z0-9-]+)', log)))
    say(client, f"\"format\" values in the tool schemas sent to the model: {[f.decode() for f in fmts]}")
    check(client, f"schema warnings: none from the client ({len(warnings)} lines, {len(distinct)} distinct)",
          not warnings, "\n".join(distinct[:12]))


SANDBOXED = ("claude-sandboxed", "codex-sandboxed", "gemini-sandboxed")
# The name `custody agent -- CLIENT` registers (the client's policy name).
AGENT_NAME = {"claude": "claude-code", "codex": "codex", "gemini": "gemini-cli"}


def verify_sandbox(client, v, server, approver):
    """A client under `custody agent`: registered as a sandboxed agent, its approvals said so,
    and its own shell's attacks were refused, while the same attacks from a plain process of
    the same user work."""
    with open(f"{v.custody_home}/audit.log", "rb") as f:
        events = [json.loads(line).get("event", {}) for line in f.read().splitlines() if line.strip()]
    name = AGENT_NAME[BASE[client]]
    started = [e for e in events if e.get("type") == "agent_start"]
    check(client, f"the launcher registered a sandboxed agent ({started})",
          len(started) == 1 and started[0].get("sandboxed") is True
          and started[0].get("name") == name, started)
    shown = sorted(set(approver.requesters.values()))
    check(client, f"every approval showed the sandboxed agent ({shown})",
          bool(shown) and all(r.startswith(f"agent {name} (pid ") and r.endswith(", sandboxed)")
                              for r in shown), shown)
    if client != "claude-sandboxed":
        return
    _, _, _, pairs = main_conversation(client, server)
    inside = " ".join(r or "" for t, _, r in pairs if t == "Bash")
    inside = model_server.flat(inside)
    seen = re.findall(r"PROCESSES-SEEN=(\d+)", inside)
    check(client, f"the client's own shell was refused each attack ({re.findall(r'DENIED-[A-Z-]+[a-z]+', inside)}, "
                  f"processes it could see: {seen})",
          all(d in inside for d in SHELL_ATTACK_DENIED)
          and not any(w in re.findall(r"[A-Z]+-[A-Za-z-]+", inside) for w in SHELL_ATTACK_WORKED)
          and seen and int(seen[0]) < 20, inside[:800])
    p = subprocess.run(["sh", "-c", shell_attack(v)], env=v.env, cwd=v.work, capture_output=True,
                       timeout=30)
    outside = p.stdout.decode(errors="replace")
    for leftover in (f"{v.custody_home}/policy.toml", f"{v.home}/.bashrc"):
        if os.path.exists(leftover):
            os.remove(leftover)
    check(client, "the same attacks from a plain process of the same user work (so the wall, not "
                  f"the attack, stopped them): {outside.split()}",
          all(w in outside.split() for w in SHELL_ATTACK_WORKED), outside)


def cleanup_everything():
    """Kills what is still running from any run: clients, brokers, and whatever else names
    a run's temp directory. Safe to call twice."""
    for p in LIVE["clients"]:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    for v in LIVE["vaults"]:
        v.teardown()
    for v in LIVE["vaults"]:
        kill_all([pid for pid, _ in processes_of(v.tmp)])


def interrupted(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    clients = sys.argv[3:] or ["codex", "claude", "gemini", "codex-sandboxed", "claude-sandboxed",
                               "gemini-sandboxed"]
    for c in clients:
        if c not in PREPARE:
            print(f"unknown client {c!r}: choose from {', '.join(PREPARE)}")
            sys.exit(2)
    if not os.access(CUSTODY, os.X_OK):
        print(f"no custody binary at {CUSTODY}")
        sys.exit(2)
    if model_server.HEX != "xxd -p":
        print("xxd is not installed: the hex command is `od -An -tx1 | tr -d ' \\n'` (one line)")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    t0 = time.time()
    timing = {}
    code = 0
    try:
        for client in clients:
            try:
                run_client(client, timing)
            except Exception as e:  # a crash is a failed check, not a traceback
                check(client, "session completed", False, repr(e))
    except KeyboardInterrupt as e:
        check("runner", f"interrupted ({e.args[0] if e.args else 'SIGINT'}); cleaned up", False)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup_everything()
    parts = [f"{c} {total:.1f}s (client {took:.1f}s)" if took is not None else f"{c} {total:.1f}s"
             for c, (total, took) in timing.items()]
    print(f"timing: {'; '.join(parts)}; total {time.time() - t0:.0f}s", flush=True)
    print(f"{results['passed']} passed, {results['failed']} failed", flush=True)
    sys.exit(code or (1 if results["failed"] else 0))


if __name__ == "__main__":
    main()
