"""Conversation datasets for SFT/RL and the chat evals: see common.py for what a Task is."""

from raychat.tasks.chat_jsonl import ChatJsonl, SmolTalk, validate_conversation
from raychat.tasks.common import Task, TaskMixture, TaskSequence, extract_answer, render_mc
from raychat.tasks.gsm8k import GSM8K
from raychat.tasks.humaneval import HumanEval
from raychat.tasks.mixtures import EVAL_TASK_NAMES, eval_task, rl_task, sft_mixture
from raychat.tasks.multiple_choice import ARC, MMLU
from raychat.tasks.synthetic import Identity, SimpleArithmetic, SimpleSpelling, SpellingBee

__all__ = ["Task", "TaskMixture", "TaskSequence", "ChatJsonl", "SmolTalk", "validate_conversation", "GSM8K",
           "HumanEval", "MMLU", "ARC", "SpellingBee", "SimpleSpelling", "SimpleArithmetic", "Identity", "render_mc",
           "extract_answer", "EVAL_TASK_NAMES", "eval_task", "sft_mixture", "rl_task"]
