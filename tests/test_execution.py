"""The code sandbox: outcomes (passed / failed / timeout), limits (time, memory, output size), no network, no
process spawning, temp-dir isolation, and real HumanEval programs (canonical solutions pass, wrong ones fail)."""

from __future__ import annotations

import gzip
import json
import os
import time

from raychat.tasks.humaneval import build_program
from raychat.tools.execution import execute_code, execute_many


def test_pass_fail_and_output():
    r = execute_code("print('hello'); import sys; print('oops', file=sys.stderr)")
    assert r.status == "passed" and r.success and r.returncode == 0
    assert r.stdout_tail == "hello\n"          # the pass token is removed from what callers see
    assert "oops" in r.stderr_tail
    r = execute_code("def f():\n    return 1\nassert f() == 2, 'wrong answer'")
    assert r.status == "failed" and not r.success
    assert "AssertionError: wrong answer" in r.stderr_tail
    assert 'File "program.py", line 3' in r.stderr_tail   # tracebacks point into the program itself
    assert execute_code("raise ValueError('x')").status == "failed"
    assert execute_code("this is not python").status == "failed"


def test_early_exit_is_not_a_pass():
    # exit status 0 before the asserts ran must not count as passing (GRPO would learn to do exactly that)
    for code in ("import sys; sys.exit(0)\nassert False", "import os; os._exit(0)\nassert False",
                 "raise SystemExit(0)\nassert False"):
        r = execute_code(code)
        assert r.status == "failed", code


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


def test_no_network_no_processes():
    r = execute_code("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)")
    assert r.status == "failed" and "network access is disabled" in r.stderr_tail
    r = execute_code("import socket\nsocket.socket()")
    assert r.status == "failed"
    for code in ("import os; os.system('true')", "import subprocess; subprocess.run(['true'])",
                 "import os; os.fork()", "import os; os.kill(1, 9)", "import shutil; shutil.rmtree('/tmp')"):
        r = execute_code(code)
        assert r.status == "failed" and "disabled in the sandbox" in r.stderr_tail, code


def test_runs_in_a_private_temp_dir(tmp_path):
    r = execute_code("import os\nopen('scratch.txt', 'w').write('hi')\nprint(os.getcwd())\n"
                     "print(os.environ.get('HOME'))")
    cwd, home = r.stdout_tail.split()
    assert r.success and cwd == home and os.path.basename(cwd).startswith("raychat_exec_")
    assert not os.path.exists(cwd)              # deleted afterwards, with what the program wrote
    assert "RAYCHAT" not in execute_code("import os; print(sorted(os.environ))").stdout_tail


def test_execute_many_keeps_order():
    progs = ["print(1)", "assert False", "print(3)", "while True: pass"]
    res = execute_many(progs, timeout=1.0, max_workers=2)
    assert [r.status for r in res] == ["passed", "failed", "passed", "timeout"]


def test_humaneval_canonical_solutions_pass(shared_data):
    with gzip.open(shared_data / "tasks" / "humaneval" / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:12]
    convs = [{"messages": [{"role": "user", "content": r["prompt"]}], "test": r["test"],
              "entry_point": r["entry_point"]} for r in rows]
    good = [build_program(c, "```python\n" + r["prompt"] + r["canonical_solution"] + "\n```")
            for c, r in zip(convs, rows)]
    bad = [build_program(c, f"def {r['entry_point']}(*args):\n    return None") for c, r in zip(convs, rows)]
    results = execute_many(good + bad, timeout=10.0)
    assert [r.status for r in results[:12]] == ["passed"] * 12, [r.stderr_tail for r in results[:12]]
    assert all(r.status == "failed" for r in results[12:])
