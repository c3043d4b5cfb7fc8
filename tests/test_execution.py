"""The code sandbox: outcomes (passed / failed / timeout), limits (time, memory, output size, processes), the OS
isolation (files outside the scratch dir, processes that outlive the run, the parent's environment, the network),
a verdict decided outside the sandbox, the refusal to run without isolation, and real HumanEval programs.

The attacks go through `posix` / `_socket` directly: those bypass the in-process guards, so what stops them is the
OS sandbox. These tests need bubblewrap (`bash deploy/install.sh dev` installs it)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from raychat.tasks.humaneval import build_solution
from raychat.tools import execution
from raychat.tools.execution import SandboxUnavailable, check_solution, execute_code, execute_many

CHECK = "def check(candidate):\n    assert candidate(2) == 3\n    assert candidate(10) == 11\n"


@pytest.fixture(autouse=True)
def _needs_the_sandbox(request):
    if "no_isolation" not in request.fixturenames:
        assert execution.isolation_problem() is None, \
            f"the sandbox tests need bubblewrap: {execution.isolation_problem()}"


@pytest.fixture
def no_isolation(monkeypatch):
    """The isolation probe fails, as when Docker's default seccomp profile refuses unshare."""
    monkeypatch.setattr(execution, "isolation_problem", lambda: "unshare refused (simulated)")
    monkeypatch.delenv(execution.ALLOW_ENV, raising=False)


def test_pass_fail_and_output():
    r = execute_code("print('hello'); import sys; print('oops', file=sys.stderr)")
    assert r.status == "passed" and r.success and r.returncode == 0
    assert r.stdout_tail == "hello\n"
    assert "oops" in r.stderr_tail
    r = execute_code("def f():\n    return 1\nassert f() == 2, 'wrong answer'")
    assert r.status == "failed" and not r.success
    assert "AssertionError: wrong answer" in r.stderr_tail
    assert 'File "program.py", line 3' in r.stderr_tail   # tracebacks point into the program itself
    assert execute_code("raise ValueError('x')").status == "failed"
    assert execute_code("this is not python").status == "failed"
    assert execute_code('print("\udc80")').stdout_tail == "?\n"   # a lone surrogate in model text: no crash


def test_timeout_kills_the_process():
    t0 = time.perf_counter()
    r = execute_code("while True:\n    pass", timeout=1.0)
    elapsed = time.perf_counter() - t0
    assert r.status == "timeout" and r.returncode is None
    assert elapsed < 5.0
    r = execute_code("import time; time.sleep(60)", timeout=0.5)   # sleeping uses no CPU: wall-time limit
    assert r.status == "timeout"


def test_memory_limit():
    r = execute_code("x = bytearray(1024 * 1024 * 1024)\nprint(len(x))", memory_mb=256)
    assert r.status == "failed"
    assert "MemoryError" in r.stderr_tail
    assert execute_code("x = bytearray(16 * 1024 * 1024)", memory_mb=256).status == "passed"


def test_output_flood_is_bounded():
    r = execute_code("while True:\n    print('x' * 1000)", timeout=5.0)
    assert r.status == "failed"                 # file-size limit stops it (SIGXFSZ/EFBIG) well before the timeout
    assert len(r.stdout_tail) <= 2000


def test_guards_give_clear_errors():
    r = execute_code("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)")
    assert r.status == "failed" and "network access is disabled" in r.stderr_tail
    for code in ("import os; os.system('true')", "import subprocess; subprocess.run(['true'])",
                 "import os; os.fork()", "import os; os.kill(1, 9)", "import shutil; shutil.rmtree('/tmp')",
                 "import os; os.remove('x')", "import os; os.rename('a', 'b')", "import os; os.chmod('.', 0o777)",
                 "import os; os.posix_spawn('/bin/true', ['true'], {})"):
        r = execute_code(code)
        assert r.status == "failed" and "disabled in the sandbox" in r.stderr_tail, code


@pytest.fixture
def victim():
    """A file the sandbox can see (outside /tmp and home, which it gets as empty tmpfs) but must not change."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        path = os.path.join(d, "victim.txt")
        with open(path, "w") as f:
            f.write("keep me")
        os.chmod(path, 0o644)
        yield d, path


def test_files_outside_the_scratch_dir_cannot_change(victim):
    d, path = victim
    for attack in (f"posix.remove({path!r})", f"posix.rename({path!r}, {path + '.moved'!r})",
                   f"posix.chmod({path!r}, 0o777)", f"open({path!r}, 'w').write('pwned')",
                   f"open({os.path.join(d, 'new.txt')!r}, 'w').write('new')", f"posix.rmdir({d!r})"):
        r = execute_code(f"import posix\n{attack}")
        assert r.status == "failed", attack
        assert "Read-only file system" in r.stderr_tail or "Permission denied" in r.stderr_tail, r.stderr_tail
    assert os.listdir(d) == ["victim.txt"]
    assert open(path).read() == "keep me" and stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_the_scratch_dir_is_the_only_writable_place():
    # statvfs resolves each path to the mount that serves it: read-only everywhere but the scratch tmpfs, including
    # the tmpfs that hide /run and the home directory and bwrap's own /dev (writable by an unprivileged caller)
    paths = ["/", "/usr", "/var/tmp", "/dev", "/dev/shm", "/run", str(Path.home()), os.getcwd()]
    r = execute_code(f"import os\nfor p in {paths!r} + ['/tmp']:\n"
                     "    print(p, bool(os.statvfs(p).f_flag & os.ST_RDONLY))")
    assert r.success, r.stderr_tail
    assert dict(line.rsplit(" ", 1) for line in r.stdout_tail.splitlines()) == {**dict.fromkeys(paths, "True"),
                                                                                  "/tmp": "False"}


def test_scratch_dir_is_private_and_discarded():
    name = f"raychat-scratch-{os.getpid()}-{time.time_ns()}.txt"
    r = execute_code(f"import os\nopen({name!r}, 'w').write('hi')\nprint(os.getcwd(), os.environ['HOME'],"
                     f" os.path.exists({name!r}))")
    assert r.success and r.stdout_tail.split() == ["/tmp", "/tmp", "True"]
    assert not os.path.exists(os.path.join("/tmp", name))      # the host's /tmp never saw it
    assert execute_code(f"import os\nassert not os.path.exists({name!r})").success   # nor does the next run


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_no_process_outlives_the_run():
    marker = f"{41 + os.getpid() % 1000}.{time.time_ns() % 10**6}"
    r = execute_code(f"import posix\nposix.posix_spawn('/bin/sleep', ['sleep', {marker!r}], {{}}, setsid=True)\n"
                     f"print('spawned')")
    assert r.success and r.stdout_tail == "spawned\n"
    deadline = time.perf_counter() + 2.0          # the PID namespace is torn down as the run ends
    while _processes_with(b"sleep\0" + marker.encode()) and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert _processes_with(b"sleep\0" + marker.encode()) == []


def test_process_count_is_limited():
    r = execute_code("import posix, time\nn = 0\ntry:\n    for _ in range(100):\n        if posix.fork() == 0:\n"
                     "            time.sleep(3)\n            posix._exit(0)\n        n += 1\nexcept OSError:\n"
                     "    pass\nprint(n)", timeout=5.0)
    assert r.success, r.stderr_tail
    assert int(r.stdout_tail) < execution._MAX_PROCESSES


def test_runs_without_privileges():
    uids = {int(execute_code("import os; print(os.getuid())").stdout_tail) for _ in range(3)}
    if os.geteuid() == 0:      # root outside: a random uid per run, far from any real user's, not shared
        assert all(u >= execution._UID_BASE for u in uids) and len(uids) == 3
    else:                      # an unprivileged user's own uid, in a user namespace of its own
        assert uids == {os.geteuid()}
    r = execute_code("import posix; posix.setuid(0)")
    assert r.status == "failed" and "PermissionError" in r.stderr_tail


def test_parent_environment_is_not_readable():
    with open("/proc/self/environ", "rb") as f:     # what /proc/<pid>/environ shows of the parent (exec-time env)
        ours = [e for e in f.read().split(b"\0") if len(e) >= 8]
    assert ours
    r = execute_code("import os\nprint(os.getppid())\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
                     "    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read())\n    except OSError:\n"
                     "        pass")
    assert r.success, r.stderr_tail
    assert not [e for e in ours if repr(e)[2:-1] in r.stdout_tail]
    assert "RAYCHAT" not in execute_code("import os; print(sorted(os.environ))").stdout_tail


def test_network_is_unreachable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        r = execute_code(f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
                         "print('connected')")
        assert r.status == "failed" and "connected" not in r.stdout_tail
        with pytest.raises(BlockingIOError):
            server.accept()


def test_verdict_is_decided_outside_the_sandbox():
    assert check_solution("def f(x):\n    return x + 1\n", CHECK, "f").status == "passed"
    r = check_solution("def f(x):\n    return x\n", CHECK, "f")
    assert r.status == "failed" and "AssertionError" in r.stderr_tail
    forgeries = [
        # the old runner's token, read from its frame, printed, then a clean exit before any test ran
        "import sys, os\nfor k, v in sys._getframe(1).f_locals.items():\n    os.write(1, repr(v).encode())\n"
        "os._exit(0)",
        "import sys; sys.exit(0)", "raise SystemExit(0)",
        # an answer that equals everything
        "class Any:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Any()",
        # a rigged repr that is not a literal
        "class R:\n    def __repr__(self):\n        return 'print(1)'\ndef f(x):\n    return R()",
        "def f(x):\n    raise ValueError('no')",
        "f = 3",
    ]
    for code in forgeries:
        r = check_solution(code, CHECK, "f")
        assert r.status == "failed", (code, r)
    r = check_solution("import time\ntime.sleep(30)", CHECK, "f", timeout=1.0)
    assert r.status == "timeout"
    r = check_solution("def f(x):\n    while True:\n        pass", CHECK, "f", timeout=1.0)
    assert r.status == "timeout"


def test_refuses_without_isolation(no_isolation):
    for run in (lambda: execute_code("print(1)"), lambda: check_solution("def f(x):\n    return x + 1", CHECK, "f"),
                lambda: execute_many(["print(1)"])):
        with pytest.raises(SandboxUnavailable, match="unshare refused \\(simulated\\)") as e:
            run()
        assert "--allow-unsandboxed-code" in str(e.value) and execution.ALLOW_ENV in str(e.value)


def test_isolation_probe_runs_python_as_the_programs_will(monkeypatch):
    probe = execution.isolation_problem.__wrapped__      # uncached
    assert probe() is None
    real = execution._bwrap_argv
    # a sandbox that starts but hides the interpreter's stdlib must not pass (every program would fail)
    monkeypatch.setattr(execution, "_bwrap_argv",
                        lambda bwrap, env: real(bwrap, env)[:-1] + ["--tmpfs", os.path.dirname(os.__file__), "--"])
    assert probe().startswith("bwrap cannot create the sandbox here (")
    monkeypatch.setattr(execution.shutil, "which", lambda name: None)
    assert probe() == "bubblewrap (bwrap) is not installed"


def test_explicit_opt_in_runs_with_guards_only(no_isolation, monkeypatch, victim):
    r = execute_code("import os; print(os.getcwd())", allow_unsandboxed=True)
    assert r.success and os.path.basename(r.stdout_tail.strip()).startswith("raychat_exec_")
    assert check_solution("def f(x):\n    return x + 1", CHECK, "f", allow_unsandboxed=True).success
    monkeypatch.setenv(execution.ALLOW_ENV, "1")
    _, path = victim
    r = execute_code(f"import os; os.remove({path!r})")
    assert r.status == "failed" and "disabled in the sandbox" in r.stderr_tail and os.path.exists(path)


def test_execute_many_keeps_order():
    progs = ["print(1)", "assert False", "print(3)", "while True: pass"]
    res = execute_many(progs, timeout=1.0, max_workers=2)
    assert [r.status for r in res] == ["passed", "failed", "passed", "timeout"]


def test_humaneval_canonical_solutions_pass(shared_data):
    with gzip.open(shared_data / "tasks" / "humaneval" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:12]
    results = []
    for r in rows:
        conv = {"messages": [{"role": "user", "content": r["prompt"]}], "test": r["test"],
                "entry_point": r["entry_point"]}
        good = build_solution(conv, "```python\n" + r["prompt"] + r["canonical_solution"] + "\n```")
        bad = build_solution(conv, f"def {r['entry_point']}(*args):\n    return None")
        results.append([check_solution(s, r["test"], r["entry_point"], setup=r["prompt"], timeout=10.0).status
                        for s in (good, bad)])
    assert results == [["passed", "failed"]] * 12


def test_eval_cli_refuses_before_loading_anything(no_isolation, tmp_path, capsys, monkeypatch):
    from raychat.cli import main

    assert main(["eval", "chat", "--tasks", "ARC-Easy,HumanEval", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raychat: error: refusing to run model-written code: unshare refused (simulated)")
    assert "Traceback" not in err
    # with the flag the sandbox check passes and the command goes on (to the missing checkpoint, here)
    monkeypatch.setenv(execution.ALLOW_ENV, "0")     # the flag sets it to 1; monkeypatch restores it afterwards
    assert main(["eval", "chat", "--tasks", "HumanEval", "--run-dir", str(tmp_path), "--allow-unsandboxed-code"]) == 2
    err = capsys.readouterr().err
    assert "refusing" not in err and err.startswith("raychat: error: ")
    assert os.environ[execution.ALLOW_ENV] == "1"


def test_speedrun_with_humaneval_refuses_before_any_stage(no_isolation, tmp_path, capsys, monkeypatch):
    """The GPU speedrun's chat eval includes HumanEval: without a sandbox it stops at once (not hours in, after
    pretraining), and --allow-unsandboxed-code reaches the chat eval."""
    from raychat.cli import main
    from raychat.commands import speedrun

    ran: list = []
    monkeypatch.setattr(speedrun, "stage_data", lambda args, preset: ran.append("data") or
                        {"data_dir": str(tmp_path), "wait": lambda: None})
    monkeypatch.setattr(speedrun, "command", lambda name, *pos, **values: ran.append((name, pos, values)))
    monkeypatch.setattr(speedrun, "training", lambda stage, *a, **k: speedrun.Stage(
        stage, lambda: False, lambda: ran.append(stage)))
    assert main(["speedrun", "--preset", "gpt2_8xh100", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raychat: error: refusing to run model-written code: unshare refused (simulated)")
    assert "--allow-unsandboxed-code" in err and ran == []
    # a preset without HumanEval needs no sandbox
    assert main(["speedrun", "--preset", "smoke", "--run-dir", str(tmp_path / "smoke")]) == 0
    assert ran[0] == "data"
    ran.clear()
    monkeypatch.setenv(execution.ALLOW_ENV, "0")     # the flag sets it to 1; monkeypatch restores it afterwards
    assert main(["speedrun", "--preset", "gpt2_8xh100", "--run-dir", str(tmp_path / "run"),
                 "--allow-unsandboxed-code"]) == 0
    chat = [values for step in ran if isinstance(step, tuple) and step[:2] == ("eval", ("chat",))
            for values in [step[2]]]
    assert "HumanEval" in chat[0]["tasks"].split(",") and chat[0]["allow_unsandboxed_code"] is True
    assert os.environ[execution.ALLOW_ENV] == "1"
