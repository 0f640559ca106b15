"""The agent of attack class 9, "starving the broker".

Starts `custody mcp` (so the broker registers this process as an agent
client), then forks 20 workers that each keep 50 connections to the broker
open without ever saying hello, reconnecting every one the broker closes.
Writes READY once the first round is open, and runs until killed.

Usage: starve.py CUSTODY SOCKET READY_FILE
"""
import json
import os
import selectors
import socket
import subprocess
import sys
import time

custody, sock_path, ready = sys.argv[1], sys.argv[2], sys.argv[3]
mcp = subprocess.Popen([custody, "mcp"], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def send(msg):
    mcp.stdin.write((json.dumps(msg) + "\n").encode())
    mcp.stdin.flush()


send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                 "clientInfo": {"name": "starver", "version": "1"}}})
mcp.stdout.readline()
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
while b"registered session" not in mcp.stderr.readline():
    pass

WORKERS, PER_WORKER = 20, 50


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
        s.setblocking(False)
        return s
    except OSError:
        s.close()
        return None


def worker(parent):
    sel = selectors.DefaultSelector()
    while True:
        if os.getppid() != parent:
            return  # the agent is gone (the test killed it): so are we
        while len(sel.get_map()) < PER_WORKER:
            s = connect()
            if s is None:
                time.sleep(0.05)
                break
            sel.register(s, selectors.EVENT_READ)
        # Anything readable is a refusal or a close: drop it, reconnect.
        for key, _ in sel.select(timeout=0.05):
            sel.unregister(key.fileobj)
            key.fileobj.close()


pids = []
for _ in range(WORKERS):
    pid = os.fork()
    if pid == 0:
        try:
            worker(os.getppid())
        finally:
            os._exit(0)
    pids.append(pid)
time.sleep(2)
with open(ready, "w") as f:
    f.write("ready")
try:
    while True:
        time.sleep(1)
finally:
    for p in pids:
        os.kill(p, 9)
