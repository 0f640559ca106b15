#!/usr/bin/env python3
"""A local HTTPS upstream for the bound-variable tests: its own test CA (made
here with the openssl CLI), a certificate for api.example.test and
other.test, on 127.0.0.1. Each request is logged as one JSON line (method,
path, Authorization header, body) to LOG; the answer echoes the
Authorization header (a destination that echoes the token, which the
lease's proxy must mask).

Usage: upstream.py DIR   (prints {"port": N, "ca": PATH} on one line, then serves)
"""
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading


def make_certs(d):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    ca_key, ca = f"{d}/ca.key", f"{d}/ca.pem"
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=custody test upstream CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    key, csr, crt = f"{d}/leaf.key", f"{d}/leaf.csr", f"{d}/leaf.pem"
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=api.example.test")
    ext = f"{d}/leaf.ext"
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:api.example.test,DNS:other.test\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    return ca, crt, key


def main():
    d = sys.argv[1]
    ca, crt, key = make_certs(d)
    log_path = f"{d}/requests.jsonl"
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_any(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            auth = self.headers.get("Authorization")
            with lock, open(log_path, "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path,
                                    "host": self.headers.get("Host"),
                                    "authorization": auth,
                                    "body": body.decode("utf-8", "replace")}) + "\n")
            answer = f"authorization={auth or ''}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(json.dumps({"port": server.server_address[1], "ca": ca, "log": log_path}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
