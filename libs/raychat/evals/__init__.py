"""Evaluation: CORE (base models), bits per byte, chat evals and ChatCORE (chat models)."""

from raychat.evals.bundle import CORE_TASK_LABELS, EVAL_BUNDLE_URL, download_eval_bundle, find_eval_bundle, load_bundle
from raychat.evals.chat import chatcore, run_chat_eval
from raychat.evals.core import evaluate_core, format_core_table, write_core_csv
from raychat.evals.loss import evaluate_bpb

__all__ = ["CORE_TASK_LABELS", "EVAL_BUNDLE_URL", "chatcore", "download_eval_bundle", "evaluate_bpb",
           "evaluate_core", "find_eval_bundle", "format_core_table", "load_bundle", "run_chat_eval",
           "write_core_csv"]
