"""The calculator tool: arithmetic against Python's own evaluation, the string operations of the counting task,
every GSM8K annotation, and a hostile input list that must come back as short error strings, fast."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tracemalloc

import pytest

from raychat.tools.calculator import (
    MAX_INPUT_CHARS,
    MAX_STR_CHARS,
    CalculatorError,
    _replace_len,
    calculate,
    evaluate_expression,
    format_result,
)

ARITHMETIC = ["1+2", "7-10", "6*7", "7/2", "7//2", "-7//2", "7%3", "-7%3", "2**10", "2**-2", "(1+2)*3", "-(3-5)",
              "+4", "1.5*4", "0.1+0.2", "3.75/1.5", "10-2-3", "2**3**2", "((((1))))", "100/8*3", "1e3/4",
              "  12 * 50 / 60  ", "-2**2", "(-2)**2", "17.5 % 4"]


@pytest.mark.parametrize("expr", ARITHMETIC)
def test_arithmetic_matches_python(expr):
    assert evaluate_expression(expr) == eval(expr)  # reference: Python itself, on trusted literals
    assert calculate(expr) == format_result(eval(expr))


def test_result_formatting():
    assert calculate("48/2") == "24"          # GSM8K writes <<48/2=24>>, not 24.0
    assert calculate("0.2*50") == "10"
    assert calculate("12/60") == "0.2"
    assert calculate("1/3") == "0.333333333333"
    assert calculate("2**100") == str(2**100)  # ints stay exact
    assert calculate("1e20*10") == "1e+21"


def test_convenience_rewrites():
    assert calculate("1,000*2") == "2000"     # thousands separators copied from the problem text
    assert calculate("3 × 4 ÷ 2 − 1") == "5"
    assert calculate("'a,b'.count(',')") == "1"   # never rewritten inside string literals


def test_string_operations():
    assert calculate("'strawberry'.count('r')") == "3"
    assert calculate('"Mississippi".lower().count("s")') == "4"
    assert calculate("'abc'.upper()") == "ABC"
    assert calculate("len('strawberry')") == "10"
    assert calculate("'straw' + 'berry'") == "strawberry"
    assert calculate("'  x '.strip()") == "x"
    assert calculate("'banana'.find('n')") == "2"
    assert calculate("'banana'.replace('a', 'o')") == "bonono"
    assert calculate("'banana'.startswith('ba')") == "True"


HOSTILE = [
    "__import__('os')", "__import__('os').system('ls')", "().__class__", "().__class__.__bases__[0].__subclasses__()",
    "''.__class__", "'x'.__len__()", "open('/etc/passwd')", "exec('1')", "eval('1')", "globals()", "x", "x + 1",
    "lambda: 1", "(lambda x: x)(1)", "[i for i in range(10)]", "{i for i in range(3)}", "(i for i in range(3))",
    "[1, 2]", "(1, 2)", "{'a': 1}", "{1}", "1 if 1 else 2", "1 < 2", "1 and 2", "not 1", "~1", "1 ^ 2", "1 << 100",
    "1 | 2", "a := 1", "'abc'[0]", "'a' * 10", "'a' * 10**9", "9**9**9", "10**100000", "2**1025", "(-8)**0.5",
    "1/0", "1//0", "1%0", "0**-1", "1e308*10", "1e999", "2.0**10000", "'x'.count(*'y')", "'x'.count(sub='x')",
    "'x'.format(1)", "'x'.join(['a'])", "'%s' % 1", "True + 1", "None", "1j", "b'x'", "f'{1}'", "...", "print(1)",
    "len([1])", "len('a', 'b')", "'a'.count()", "'a'.count(1)", "(1).bit_length()", "import os", "1; 2", "",
    "   ", "(" * 250 + "1" + ")" * 250, "-" * 300 + "1", "1+" * 200 + "1", "'" + "a" * 10_000 + "'",
    "'" + "a" * 1_000_000 + "'", "1" * 600, "'ab'.replace('a', 'b' * 500).replace('b', 'c' * 500)",
    "'" + "a" * 300 + "'.replace('a', '" + "b" * 200 + "')", "(2**1000)*(2**1000)",
]

# A 4,096-character string (64 a's, each replaced by 64 b's) replaced into itself at every position: the result
# would be 4096 + 4097 * 4096 = 16,785,408 characters (16.8 MB of ASCII, 67 MB with 4-byte characters) that the old
# code built before its length check.
X4096 = "'" + "a" * 64 + "'.replace('a', '" + "b" * 64 + "')"
SELF_REPLACE = f"len({X4096}.replace('', {X4096}))"


@pytest.mark.parametrize("expr", HOSTILE + [SELF_REPLACE], ids=lambda e: repr(e)[:40])
def test_hostile_inputs_are_rejected_quickly(expr):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = calculate(expr)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.startswith("Error: "), f"{expr[:60]!r} -> {out[:80]!r}"
    assert len(out) < 120                     # the model sees this as tool output: short
    assert elapsed < 1.0                      # generous: the point is "not 9**9**9 for minutes"
    assert peak < 1 << 20, peak               # refused from an estimate, before the big value exists
    with pytest.raises(CalculatorError):
        evaluate_expression(expr)


def test_replace_size_is_known_before_building_it():
    # by hand: 6 + 3 matches * (2 - 1) = 9 ('boonoonoo'); '' matches 3 + 1 = 4 times: 3 + 4 * 1 = 7 ('-a-b-c-');
    # 'aa' matches 'aaa' once: 3 + 1 * (1 - 2) = 2 ('ba'); no match: unchanged
    cases = ((("banana", "a", "oo"), 9), (("abc", "", "-"), 7), (("aaa", "aa", "b"), 2), (("abc", "x", "yy"), 3))
    for args, n in cases:
        assert _replace_len(*args) == n == len(args[0].replace(*args[1:]))
    assert calculate(f"len({X4096})") == str(MAX_STR_CHARS) == "4096"   # 64 * 64: exactly at the limit
    assert calculate("'" + "a" * 64 + "'.replace('a', '" + "b" * 65 + "')") == "Error: string too long"  # 4160
    assert calculate(SELF_REPLACE) == "Error: string too long"


def test_flat_chains_are_not_nesting():
    # Python parses a+b+c as ((a+b)+c): a chain is as deep as it is long, yet nothing in it is nested
    assert calculate("+".join(str(i) for i in range(1, 35))) == "595"      # 34 * 35 / 2
    assert calculate("100" + "-1" * 40) == "60"
    assert calculate("2*3+4*5+6*7-8/4") == "66"                              # 6 + 20 + 42 - 2
    # the node limit bounds a chain: 85 terms = 85 constants + 84 BinOp + 84 Add + Expression = 254 <= 256
    assert calculate("1+" * 84 + "1") == "85"
    assert calculate("1+" * 85 + "1") == "Error: expression too complex"  # 86 terms: 257 nodes


def test_real_nesting_stays_bounded():
    # k parenthesised levels put the innermost operand at depth k; the limit is 32
    assert calculate("(1+" * 32 + "1" + ")" * 32) == "33"
    assert calculate("(1+" * 33 + "1" + ")" * 33) == "Error: expression too deeply nested"
    assert calculate("-" * 32 + "1") == "1" and calculate("-" * 31 + "1") == "-1"
    assert calculate("-" * 33 + "1") == "Error: expression too deeply nested"
    assert calculate("1**" * 32 + "1") == "1"                                # ** is right-associative: nesting
    assert calculate("1**" * 33 + "1") == "Error: expression too deeply nested"


def test_calculate_never_raises_on_non_strings():
    assert calculate(None).startswith("Error: ")  # type: ignore[arg-type]
    assert calculate("1" * (MAX_INPUT_CHARS + 1)).startswith("Error: expression too long")


def test_every_gsm8k_annotation_reproduces(shared_data):
    """The GSM8K task turns `<<expr=result>>` into tool calls: at inference the engine's calculator must return
    the same number the training data shows, for every one of the annotations."""
    n = 0
    with open(shared_data / "tasks" / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            for ann in re.findall(r"<<([^>]*)>>", json.loads(line)["answer"]):
                expr, _, result = ann.rpartition("=")
                got = calculate(expr)
                assert not got.startswith("Error"), (expr, got)
                assert float(got) == pytest.approx(float(result), abs=0.006), (expr, result, got)
                n += 1
    assert n == 23716


def test_importing_the_calculator_loads_no_torch():
    """The serving replica runs the calculator in a child under a 512 MiB address-space limit
    (serve/tool_worker.py): importing torch there fails (OpenBLAS cannot allocate), and the tool was
    `unavailable` for every call. The calculator and its package stay standard-library only."""
    code = "import sys, raychat.tools.calculator; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
