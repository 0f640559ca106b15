"""Watches the broker's events from inside the agent's process tree and
writes the request id of every `pending` event it hears to OUT, one per
line, for SECONDS.

Usage: watch.py SOCKET OUT SECONDS
"""
import json
import socket
import struct
import sys
import time

sock_path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)


def send(obj):
    data = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(data)) + data)


def recv():
    head = s.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        raise EOFError
    n = struct.unpack(">I", head)[0]
    return json.loads(s.recv(n, socket.MSG_WAITALL))


send({"id": 1, "op": "hello", "protocol": 1,
      "client": {"kind": "cli", "name": "custody", "version": "0.1.0"}})
recv()
send({"id": 2, "op": "watch"})
recv()
open(out + ".ready", "w").close()
until = time.monotonic() + seconds
s.settimeout(0.2)
with open(out, "w") as f:
    while time.monotonic() < until:
        try:
            frame = recv()
        except socket.timeout:
            continue
        except EOFError:
            break
        event = frame.get("event", {})
        if event.get("type") == "pending" or "request_id" in event:
            f.write(event.get("request_id", "") + "\n")
            f.flush()
