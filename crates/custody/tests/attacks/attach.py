"""Tries to attach to PID with ptrace (as `strace -p` or a debugger would)
and prints `attached` (then detaches) or `refused ERRNO`.

Usage: attach.py PID
"""
import ctypes
import sys

PTRACE_ATTACH, PTRACE_DETACH = 16, 17
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = int(sys.argv[1])
if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
    import os
    os.waitpid(pid, 0)
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    print("attached")
else:
    print(f"refused {ctypes.get_errno()}")
