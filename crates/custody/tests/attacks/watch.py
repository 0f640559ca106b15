"""Watches the broker's events and writes the request id of every event
that names one to OUT, one per line, for SECONDS.

Usage: watch.py SOCKET OUT SECONDS
"""
import socket
import sys
import time

import wire

sock_path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = wire.connect(sock_path)
wire.send(s, {"id": 2, "op": "watch"})
wire.recv(s)
open(out + ".ready", "w").close()
until = time.monotonic() + seconds
s.settimeout(0.2)
with open(out, "w") as f:
    while time.monotonic() < until:
        try:
            frame = wire.recv(s)
        except socket.timeout:
            continue
        except EOFError:
            break
        event = frame.get("event", {})
        if "request_id" in event:
            f.write(event["request_id"] + "\n")
            f.flush()
