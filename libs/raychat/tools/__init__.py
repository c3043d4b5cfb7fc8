"""Tools the model may call (calculator) and the sandbox that runs generated code for evals."""

from raychat.tools.calculator import CalculatorError, calculate, evaluate_expression, format_result
from raychat.tools.execution import ExecutionResult, execute_code, execute_many

__all__ = ["CalculatorError", "calculate", "evaluate_expression", "format_result",
           "ExecutionResult", "execute_code", "execute_many"]
