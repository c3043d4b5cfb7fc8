"""Run untrusted, model-written Python (HumanEval completions) and report passed / failed / timeout.

Defence in layers, each "best effort" on its own (this is an eval harness, not a security boundary; run it in a
container for anything adversarial):
1. a separate process (`python -I -S`: isolated mode, no site-packages, no PYTHON* env vars) in its own session,
   so a timeout kills the whole process group (children included) with SIGKILL;
2. a fresh temporary working directory, also used as HOME and TMPDIR, deleted afterwards;
3. resource limits set by a prelude in the child before any user code runs: address space (memory), CPU seconds,
   file size (stdout/stderr go to files, so a print loop cannot fill the parent's memory), open files;
4. no network: the prelude tries to enter a new (empty) network namespace via unshare(CLONE_NEWUSER|CLONE_NEWNET)
   and in any case replaces `socket.socket`/`create_connection` with stubs that raise;
5. the prelude disables process-spawning and destructive functions (os.system, os.fork, subprocess.Popen,
   os.kill, shutil.rmtree, ...), as in OpenAI's human-eval `reliability_guard`.

Why a subprocess and not multiprocessing.fork: the parent may hold CUDA contexts, Ray actors and threads;
forking that is fragile, and a fresh interpreter starts in ~20 ms.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

TAIL_CHARS = 2000
_OUTPUT_LIMIT_BYTES = 1 << 20     # RLIMIT_FSIZE: stdout/stderr/any file the program writes

# Runs in the child before the user's program (which follows as a separate code object, so its tracebacks show
# its own line numbers). Keeps references it needs in its own namespace, then wipes its names.
_PRELUDE = r'''
import resource as _r, os as _os, sys as _sys
def _lim(which, value):
    try:
        soft, hard = _r.getrlimit(which)
        value = value if hard == _r.RLIM_INFINITY else min(value, hard)
        _r.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass
_lim(_r.RLIMIT_AS, {memory_bytes})
_lim(_r.RLIMIT_DATA, {memory_bytes})
_lim(_r.RLIMIT_CPU, {cpu_seconds})
_lim(_r.RLIMIT_FSIZE, {fsize_bytes})
_lim(_r.RLIMIT_CORE, 0)
_lim(_r.RLIMIT_NOFILE, 64)
try:  # an empty network namespace: no interfaces at all (needs unprivileged user namespaces)
    import ctypes as _ct
    _libc = _ct.CDLL(None, use_errno=True)
    _NETNS = _libc.unshare(0x10000000 | 0x40000000) == 0   # CLONE_NEWUSER | CLONE_NEWNET
    del _ct, _libc
except Exception:
    _NETNS = False
import socket as _socket
def _no_network(*a, **k):
    raise OSError("network access is disabled in the sandbox")
_socket.socket = _no_network
_socket.create_connection = _no_network
_socket.socketpair = _no_network
_socket.getaddrinfo = _no_network
import builtins as _b, shutil as _sh, subprocess as _sp
def _disabled(*a, **k):
    raise PermissionError("disabled in the sandbox")
for _name in ("system", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv", "setuid", "removedirs",
              "rmdir", "fchdir", "chroot", "truncate", "execv", "execve", "execvp", "execl", "spawnv", "popen"):
    if hasattr(_os, _name):
        setattr(_os, _name, _disabled)
_sh.rmtree = _disabled
_sh.move = _disabled
_sp.Popen = _disabled
_b.exit = _b.quit = None
del _r, _b, _sh, _sp, _name, _lim
'''

# The child: read the per-run token and delete its file, apply the prelude, run the program, then write the token
# to fd 1. Exit status 0 *and* the token = passed, so a program that calls sys.exit(0) / os._exit(0) before its
# asserts ran does not count as a pass (a reward hack GRPO would find).
_RUNNER = r'''
def _main():
    import os, sys
    with open("token.txt", encoding="ascii") as f:
        token = f.read().encode()
    os.remove("token.txt")
    src = open("program.py", encoding="utf-8").read()
    exec(open("prelude.py", encoding="utf-8").read(), {"__name__": "__sandbox_prelude__"})
    os.remove("prelude.py")
    write = os.write
    exec(compile(src, "program.py", "exec"), {"__name__": "__main__"})
    sys.stdout.flush()
    write(1, token)
_main()
'''


@dataclass
class ExecutionResult:
    status: str            # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    seconds: float

    @property
    def success(self) -> bool:
        return self.status == "passed"


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
            return f.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


def execute_code(code: str, timeout: float = 5.0, memory_mb: int = 512) -> ExecutionResult:
    """Run `code` as `__main__` in a sandboxed interpreter. Exit status 0 within `timeout` seconds of wall time =
    passed; a non-zero exit (exception, failed assert, memory error, resource-limit signal) = failed; still
    running at the deadline = timeout (the process group is SIGKILLed)."""
    workdir = tempfile.mkdtemp(prefix="raychat_exec_")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        prelude = _PRELUDE.format(memory_bytes=int(memory_mb) << 20, cpu_seconds=max(1, int(timeout) + 1),
                                  fsize_bytes=_OUTPUT_LIMIT_BYTES)
        with open(os.path.join(workdir, "prelude.py"), "w", encoding="utf-8") as f:
            f.write(prelude)
        token = f"<raychat-ok-{secrets.token_hex(16)}>"
        with open(os.path.join(workdir, "token.txt"), "w", encoding="ascii") as f:
            f.write(token)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        out_path, err_path = os.path.join(workdir, "stdout.txt"), os.path.join(workdir, "stderr.txt")
        t0 = time.perf_counter()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _RUNNER], cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
                status = "exited"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                # kill the whole session: the program may have left children behind even on a normal exit
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        seconds = time.perf_counter() - t0
        stdout = _tail(out_path)
        if status == "exited":
            status = "passed" if rc == 0 and token in stdout else "failed"
        return ExecutionResult(status, rc, stdout.replace(token, ""), _tail(err_path), seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def execute_many(programs: list[str], timeout: float = 5.0, memory_mb: int = 512,
                 max_workers: int | None = None) -> list[ExecutionResult]:
    """Run programs concurrently (threads only wait on subprocesses); results in input order."""
    max_workers = max_workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(lambda c: execute_code(c, timeout=timeout, memory_mb=memory_mb), programs))
