"""Tools the model may call (calculator) and, in `raychat.tools.execution`, the sandbox that runs generated
code for evals. Only the calculator is imported here: it is standard-library only, and the serving replica
runs it in a child process under a small address-space limit (serve/tool_worker.py) where importing torch
(which `execution` pulls in through raychat.common) fails."""

from raychat.tools.calculator import CalculatorError, calculate, evaluate_expression, format_result

__all__ = ["CalculatorError", "calculate", "evaluate_expression", "format_result"]
