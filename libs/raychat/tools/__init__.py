"""Tools the model may call (calculator) and the sandbox that runs generated code for evals.

The calculator imports nothing but the standard library: the serving app runs it in a child process under a
512 MiB address-space limit, where importing torch (which the sandbox's error type pulls in through
raychat.common) would not fit. So the sandbox's names load on first use, not with the package."""

from raychat.tools.calculator import CalculatorError, calculate, evaluate_expression, format_result

_EXECUTION = ("ExecutionResult", "SandboxUnavailable", "check_solution", "execute_code", "execute_many")

__all__ = ["CalculatorError", "calculate", "evaluate_expression", "format_result", *_EXECUTION]


def __getattr__(name: str):
    if name in _EXECUTION:
        from raychat.tools import execution

        return getattr(execution, name)
    raise AttributeError(f"module 'raychat.tools' has no attribute {name!r}")
