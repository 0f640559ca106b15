"""The broker's wire protocol, spoken directly (no custody CLI): 4-byte
big-endian length frames of JSON, `hello` first. Shared by the attack
scripts that need their own client."""
import json
import socket
import struct


def connect(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    send(s, {"id": 1, "op": "hello", "protocol": 1,
             "client": {"kind": "cli", "name": "custody", "version": "0.1.0"}})
    recv(s)
    return s


def send(s, obj):
    data = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(data)) + data)


def recv(s):
    head = s.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        raise EOFError
    n = struct.unpack(">I", head)[0]
    return json.loads(s.recv(n, socket.MSG_WAITALL))
