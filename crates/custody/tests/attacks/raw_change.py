"""Sends one vault change straight to the broker socket, without the
custody CLI (so no client-side check can stop it): hello, then the request
given as JSON. Exits 0 only if the broker answered ok.

Usage: raw_change.py SOCKET REQUEST_JSON
"""
import json
import socket
import struct
import sys

sock_path, request = sys.argv[1], json.loads(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)


def send(obj):
    data = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(data)) + data)


def recv():
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    return json.loads(s.recv(n, socket.MSG_WAITALL))


send({"id": 1, "op": "hello", "protocol": 1,
      "client": {"kind": "cli", "name": "custody", "version": "0.1.0"}})
recv()
send(dict(id=2, **request))
answer = recv()
print(json.dumps(answer))
sys.exit(0 if "ok" in answer else 1)
