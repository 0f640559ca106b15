"""Sends one vault change straight to the broker socket, without the
custody CLI (so no client-side check can stop it): hello, then the request
given as JSON. Exits 0 only if the broker answered ok.

Usage: raw_change.py SOCKET REQUEST_JSON
"""
import json
import sys

import wire

sock_path, request = sys.argv[1], json.loads(sys.argv[2])
s = wire.connect(sock_path)
wire.send(s, dict(id=2, **request))
answer = wire.recv(s)
print(json.dumps(answer))
sys.exit(0 if "ok" in answer else 1)
