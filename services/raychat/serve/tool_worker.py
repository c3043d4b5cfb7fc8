"""The calculator of an engine replica, run in a child process with a deadline.

Why: the engine calls its tool inside `step()`, so every sequence of the batch waits for it. An expression the
calculator accepts can still be expensive before its own size checks fire (issue #17: `len(X.replace('',X))`
on a 4,096-character string took up to 160 ms and 67 MB); in-process, nothing can stop it. Here each call goes
over a pipe to a long-lived child; if no answer comes within `timeout_s` the child is killed (its whole
process group), a fresh one is started for the next call, and the model sees `Error: calculation took too long`.
The child runs under RLIMIT_AS, so a runaway allocation fails there, not in the replica.

    tool = BoundedTool(timeout_s=0.1)      # Engine(model, tok, tool_fn=tool); tool("6*7") -> "42"
    tool.close()

The child is a plain `python -m raychat.serve.tool_worker` (no multiprocessing: under Ray the spawn method
would re-import the worker's __main__), speaking one JSON string per line each way.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

TIMEOUT_ERROR = "Error: calculation took too long"
UNAVAILABLE_ERROR = "Error: calculator unavailable"


class BoundedTool:
    """tool_fn for the Engine: expression -> result text, never slower than about `timeout_s`."""

    def __init__(self, timeout_s: float = 0.1, memory_mb: int = 512, start_timeout_s: float = 30.0,
                 target: str = "raychat.tools.calculator:calculate"):
        """target: the function the child runs, `module:attribute`, str -> result (the calculator)."""
        self.timeout_s, self.memory_mb, self.start_timeout_s = timeout_s, memory_mb, start_timeout_s
        self.target = target
        self.proc: subprocess.Popen | None = None
        self._ready = False
        self.num_killed = 0
        self._start()

    def _start(self) -> None:
        # the child must import what this process imports (a Ray worker's sys.path is not all in PYTHONPATH)
        path = os.pathsep.join(p for p in sys.path if p)
        env = dict(os.environ, PYTHONPATH=path, RAYCHAT_TOOL_MEMORY_MB=str(self.memory_mb),
                   RAYCHAT_TOOL_TARGET=self.target)
        self.proc = subprocess.Popen([sys.executable, "-m", "raychat.serve.tool_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                     env=env, start_new_session=True)
        self._ready = False

    def _readline(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def __call__(self, expr: str) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self._kill()
            self._start()
        if not self._ready:  # only after a start: the child imports the calculator first
            line = self._readline(self.start_timeout_s)
            if line is None or line.strip() != '"ready"':
                self._kill()
                return UNAVAILABLE_ERROR
            self._ready = True
        try:
            self.proc.stdin.write(json.dumps(expr) + "\n")
            self.proc.stdin.flush()
            line = self._readline(self.timeout_s)
        except (BrokenPipeError, OSError):
            line = None
        if line:
            return json.loads(line)
        self.num_killed += 1
        self._kill()
        self._start()  # now, so the next call finds it ready
        return TIMEOUT_ERROR

    def close(self) -> None:
        self._kill()


def _serve() -> None:
    import resource

    limit = int(os.environ.get("RAYCHAT_TOOL_MEMORY_MB", "512")) * 1024**2
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import importlib

    module, _, attr = os.environ.get("RAYCHAT_TOOL_TARGET", "raychat.tools.calculator:calculate").partition(":")
    calculate = getattr(importlib.import_module(module), attr)
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        try:
            result = str(calculate(json.loads(line)))
        except MemoryError:
            result = "Error: result too large"
        except Exception as e:  # noqa: BLE001 - tool output, never a dead worker
            result = f"Error: {type(e).__name__}"
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _serve()
