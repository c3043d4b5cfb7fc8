"""The calculator tool: the model writes `<|python_start|>expr<|python_end|>`, the engine calls `calculate(expr)`
and forces `<|output_start|>result<|output_end|>` into the stream.

Why an AST whitelist and not `eval` with a character filter: the expression comes from a sampled model (and, behind
the serving app, indirectly from users), so "what may run" must be a closed list, not a list of things we thought to
forbid. We parse with `ast.parse(mode="eval")` and walk the tree ourselves; Python never executes the input.

Allowed:
- numbers (int, float; no complex, no bools), `+ - * / // % **`, unary `-`/`+`, parentheses;
- string literals, `str + str`, `len(str)`, and a few pure string methods used by the spelling/letter-counting task:
  `'strawberry'.count('r')`, `.lower()`, `.upper()`, `.strip()`, `.find()`, `.startswith()`, `.endswith()`,
  `.replace()`.
Everything else (names, attribute access outside those calls, imports, lambdas, comprehensions, subscripts,
keyword arguments, ...) is rejected. Cost bounds: input length, node count, nesting depth, and the size of every
result estimated *before* computing it (integers in bits, strings in characters; finite floats only): `9**9**9`
would otherwise allocate ~150 MB and take minutes, and `X.replace('', X)` on a 4,096-character X builds a string of
16.8 M characters before any check after the fact could refuse it. Nesting depth counts real nesting (parentheses,
function arguments, unary signs, right-associative `**`), not the length of a flat chain like `1+2+...+34`, which
Python's parser builds as a left-leaning tree as deep as it is long.

`calculate` never raises: it returns the result text or a short `Error: ...` string, because whatever it returns
is shown to the model as tool output (a model can learn to recover from an error message, not from a crash).
`evaluate_expression` is the raising variant for code that wants the Python value.
"""

from __future__ import annotations

import ast
import math
import operator
import re

MAX_INPUT_CHARS = 512     # tool calls are short; also bounds parser work and literal sizes
MAX_DEPTH = 32            # real nesting (our walk recurses once per level)
MAX_NODES = 256
MAX_INT_BITS = 1024       # ~308 decimal digits: far beyond anything a word problem needs
MAX_STR_CHARS = 4096

_NUM_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_OP_SYMBOLS = {ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
               ast.MatMult: "@"}
# method name -> (min args, max args); every argument must be a string
_STR_METHODS = {"count": (1, 1), "lower": (0, 0), "upper": (0, 0), "strip": (0, 1), "find": (1, 1),
                "startswith": (1, 1), "endswith": (1, 1), "replace": (2, 2)}
# thousands separators the model copies from problem text: "1,000" -> "1000" (only digit,3 digits groups)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be computed; the message is what the model will see."""


def _normalise(expr: str) -> str:
    expr = expr.strip()
    if "'" not in expr and '"' not in expr:    # only rewrite pure arithmetic, never inside string literals
        expr = _THOUSANDS.sub("", expr.translate(_UNICODE_OPS))
    return expr


def _check_value(v):
    """Bound every intermediate result, so no chain of allowed operations can blow up memory or time."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if v.bit_length() > MAX_INT_BITS:
            raise CalculatorError("result too large")
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise CalculatorError("result too large")
    elif isinstance(v, str):
        if len(v) > MAX_STR_CHARS:
            raise CalculatorError("string too long")
    else:
        raise CalculatorError(f"result of type {type(v).__name__} is not supported")
    return v


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _replace_len(s: str, old: str, new: str) -> int:
    """len(s.replace(old, new)) without building it: each of the s.count(old) matches (len(s)+1 for old == '')
    changes the length by len(new) - len(old)."""
    return len(s) + s.count(old) * (len(new) - len(old))


def _mul(a, b):
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise CalculatorError("result too large")   # |a*b| has at least bits(a)+bits(b)-1 bits
    return a * b


def _pow(base, exp):
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        # |base|**exp has about exp*log2|base| bits: refuse before computing it
        if exp * math.log2(abs(base)) > MAX_INT_BITS:
            raise CalculatorError("result too large")
    try:
        r = base ** exp
    except OverflowError:
        raise CalculatorError("result too large") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    if isinstance(r, complex):
        raise CalculatorError("complex result is not supported")
    return r


def _binop(op: type, a, b):
    if isinstance(a, str) and isinstance(b, str) and op is ast.Add:
        if len(a) + len(b) > MAX_STR_CHARS:
            raise CalculatorError("string too long")
        return a + b
    if not (_is_num(a) and _is_num(b)):
        raise CalculatorError("arithmetic needs numbers")
    if op is ast.Pow:
        return _check_value(_pow(a, b))
    try:
        return _check_value(_mul(a, b) if op is ast.Mult else _NUM_OPS[op](a, b))
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result too large") from None


def _eval(node: ast.AST, depth: int):
    if depth > MAX_DEPTH:
        raise CalculatorError("expression too deeply nested")
    d = depth + 1
    if isinstance(node, ast.BinOp):
        # a chain `a - b + c * d - e` is a tree leaning left, ((a - b) + (c * d)) - e: walk its left spine in a loop
        # at this depth, so only operands nested on the right (or in parentheses) go one level deeper
        chain = []
        while isinstance(node, ast.BinOp):
            if type(node.op) not in _NUM_OPS:
                raise CalculatorError(f"operator {_OP_SYMBOLS.get(type(node.op), type(node.op).__name__)} "
                                      "is not allowed")
            chain.append(node)
            node = node.left
        value = _eval(node, d)
        for b in reversed(chain):
            value = _binop(type(b.op), value, _eval(b.right, d))
        return value
    if isinstance(node, ast.Constant):
        v = node.value
        if _is_num(v) or isinstance(v, str):
            return _check_value(v)
        raise CalculatorError(f"constant {v!r} is not allowed")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, d)
        if not _is_num(v):
            raise CalculatorError("unary minus/plus needs a number")
        return _check_value(-v if isinstance(node.op, ast.USub) else +v)
    if isinstance(node, ast.Call):
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculatorError("keyword or star arguments are not allowed")
        f = node.func
        if isinstance(f, ast.Name) and f.id == "len":
            if len(node.args) != 1:
                raise CalculatorError("len() takes one argument")
            v = _eval(node.args[0], d)
            if not isinstance(v, str):
                raise CalculatorError("len() needs a string")
            return len(v)
        if isinstance(f, ast.Attribute) and f.attr in _STR_METHODS:
            obj = _eval(f.value, d)
            if not isinstance(obj, str):
                raise CalculatorError(f".{f.attr}() is only allowed on strings")
            lo, hi = _STR_METHODS[f.attr]
            if not lo <= len(node.args) <= hi:
                raise CalculatorError(f"wrong number of arguments to .{f.attr}()")
            args = [_eval(a, d) for a in node.args]
            if not all(isinstance(a, str) for a in args):
                raise CalculatorError(f".{f.attr}() needs string arguments")
            if f.attr == "replace" and _replace_len(obj, *args) > MAX_STR_CHARS:
                raise CalculatorError("string too long")
            # the others return an int or a string at most 3x as long (upper() of 'ﬃ' is 'FFI'): cheap either way
            return _check_value(getattr(obj, f.attr)(*args))
        raise CalculatorError("function calls are not allowed (only len() and string methods)")
    if isinstance(node, ast.Name):
        raise CalculatorError(f"names are not allowed ({node.id})")
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed")
    raise CalculatorError(f"{type(node).__name__} is not allowed")


def evaluate_expression(expr: str):
    """Evaluate a whitelisted expression; returns int | float | str | bool, raises CalculatorError."""
    if not isinstance(expr, str):
        raise CalculatorError("expression must be a string")
    if len(expr) > MAX_INPUT_CHARS:
        raise CalculatorError(f"expression too long (max {MAX_INPUT_CHARS} characters)")
    expr = _normalise(expr)
    if not expr:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise CalculatorError("invalid syntax") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError("expression too complex")
    return _eval(tree.body, 0)


def format_result(value) -> str:
    """Result text as the model should see it: integral floats without '.0' (GSM8K's annotations write `48/2=24`,
    so the tool output at inference matches the training data), other floats to 12 significant digits."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def calculate(expr: str) -> str:
    """Tool entry point: result text, or `Error: <reason>` (never raises)."""
    try:
        return format_result(evaluate_expression(expr))
    except CalculatorError as e:
        return f"Error: {e}"
    except Exception as e:  # noqa: BLE001 - defence in depth: a tool call must never crash the engine
        return f"Error: {type(e).__name__}"
