"""What an agent's shell tries against custody and the human, as the same uid.

Run by `tests/sandbox.rs` twice: inside `custody agent -- python3 inside.py CONFIG` and as a
plain process, so the test proves the wall (every attempt refused by the kernel inside) and
not a broken attack (every attempt works outside).

CONFIG (JSON) names the targets. Prints one JSON object: attempt -> "ok" when it worked, else
the errno's name (EACCES, EPERM, ...) or a short word for what went wrong otherwise. Attempts
that would break the human's setup outside undo themselves (the socket is renamed back, files
are opened for append and closed unchanged).
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

cfg = json.loads(sys.argv[1])
out = {}


def attempt(name, fn):
    try:
        r = fn()
        out[name] = "ok" if r is None else r
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))


def read_vault():
    # Offline PIN guessing and decryption start here.
    with open(cfg["vault"], "rb") as f:
        f.read(16)


def write_policy():
    with open(os.path.join(cfg["custody_home"], "policy.toml"), "a"):
        pass


def roll_back():
    # A rollback replaces vault.db and audit.log with older copies: it needs write access.
    for path in (cfg["vault"], cfg["audit"]):
        with open(path, "ab"):
            pass


def rename_socket():
    s = cfg["socket"]
    os.rename(s, s + ".moved")
    os.rename(s + ".moved", s)


def plant_socket():
    p = os.path.join(cfg["runtime"], "planted.sock")
    x = socket.socket(socket.AF_UNIX)
    try:
        x.bind(p)
    finally:
        x.close()
    os.unlink(p)


def lease_environ():
    with open(f"/proc/{cfg['lease_pid']}/environ", "rb") as f:
        data = f.read()
    return "ok" if cfg["token"].encode() in data else "no-value"


def lease_file():
    with open(cfg["lease_file"], "rb") as f:
        data = f.read()
    return "ok" if cfg["file_value"].encode() in data else "no-value"


def signal_broker():
    # SIGCONT: harmless to a running broker outside, and still a signal.
    os.kill(cfg["broker_pid"], signal.SIGCONT)


def write_bashrc():
    with open(os.path.join(cfg["home"], ".bashrc"), "a"):
        pass


def read_ssh_key():
    with open(os.path.join(cfg["home"], ".ssh", "id_ed25519"), "rb") as f:
        f.read()


def write_other_client():
    # Another client's settings (hooks run when the human starts it later).
    with open(os.path.join(cfg["home"], ".codex", "config.toml"), "a"):
        pass


def connect_human_socket():
    # A socket of the human's (tmux, ssh-agent, systemd --user): through it
    # the agent could start something outside its sandbox.
    x = socket.socket(socket.AF_UNIX)
    try:
        x.connect(cfg["human_socket"])
    finally:
        x.close()


def escape_and_approve():
    # Leave the process tree (setsid, double fork), then approve the human's pending request
    # with the PIN (as if the agent had learnt it). The broker decides by process tree.
    mark = os.path.join(cfg["tmp"], "escapee.out")
    script = (f"printf '%s\\n' {cfg['pin']} | {cfg['custody']} approve {cfg['request']} --once"
              f" --pin-stdin > {mark}.part 2>&1; echo \"rc=$?\" >> {mark}.part; mv {mark}.part {mark}")
    subprocess.run(["setsid", "-f", "sh", "-c", script], check=True)
    until = time.time() + 30
    while not os.path.exists(mark):
        if time.time() > until:
            return "timeout"
        time.sleep(0.05)
    with open(mark) as f:
        text = f.read()
    if "rc=0" in text:
        return "ok"
    return "refused: " + " ".join(text.split())[:300]


for name, fn in [("read_vault", read_vault), ("write_policy", write_policy),
                 ("roll_back", roll_back), ("rename_socket", rename_socket),
                 ("plant_socket", plant_socket), ("lease_environ", lease_environ),
                 ("lease_file", lease_file), ("signal_broker", signal_broker),
                 ("write_bashrc", write_bashrc), ("read_ssh_key", read_ssh_key),
                 ("connect_human_socket", connect_human_socket),
                 ("write_other_client", write_other_client),
                 ("escape_and_approve", escape_and_approve)]:
    if name in cfg.get("only", [name]):
        attempt(name, fn)
print(json.dumps(out))
