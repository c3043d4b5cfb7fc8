"""Tools the model may call (calculator) and the sandbox that runs generated code for evals."""

from raychat.tools.calculator import CalculatorError, calculate, evaluate_expression, format_result
from raychat.tools.execution import ExecutionResult, SandboxUnavailable, check_solution, execute_code, execute_many

__all__ = ["CalculatorError", "calculate", "evaluate_expression", "format_result",
           "ExecutionResult", "SandboxUnavailable", "check_solution", "execute_code", "execute_many"]
