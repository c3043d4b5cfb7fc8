"""Chat evals: how well a chat model (SFT or RL stage) answers, per task, and ChatCORE over the tasks.

- Categorical (ARC-Easy, ARC-Challenge, MMLU): one forward over the rendered prompt (ending with
  <|assistant_start|>); at the last position, the logits of the allowed letters only are compared and the largest
  wins. No sampling, so a model is graded on what it knows, not on whether it also learned to stop after a letter.
- Generative (GSM8K, HumanEval, SpellingBee, SimpleArithmetic): the engine samples `num_samples` completions (tool
  use on: GSM8K and SpellingBee call the calculator); the task's checker grades each; a problem passes if any
  sample passes (pass@k; greedy pass@1 by default). HumanEval runs the code in the sandbox.
- ChatCORE: the mean of centered accuracies, (acc - baseline) / (1 - baseline), with baseline 0.25 for the 4-way
  multiple-choice tasks and 0 for generative ones: 0 = chance, 1 = perfect, comparable across task mixes.

The engine is anything with `generate(prompt_ids, SamplingParams) -> list[list[int]]` (completion ids); when it
also has `generate_many(prompts, params)` (raychat's Engine), problems are batched through continuous batching.
Distributed: rank r takes problems r, r+W, ...; pass counts are all-reduced.
"""

from __future__ import annotations

import time

import torch

from raychat.chat import completion_events, display_text, stream_reply
from raychat.common import RaychatError, get_dist_info
from raychat.evals.core import model_device, model_max_seq_len
from raychat.model.attention import inference_attention
from raychat.progress import Progress
from raychat.tasks import eval_task
from raychat.tasks.common import Task

BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
             "SpellingBee": 0.0, "SimpleArithmetic": 0.0}
CHATCORE_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee")


def _reduce_counts(counts: list[int], device) -> list[int]:
    if get_dist_info(initialized_only=True).world_size == 1:
        return counts
    t = torch.tensor(counts, dtype=torch.long, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def _problem_ids(task: Task, max_problems: int | None) -> list[int]:
    n = len(task) if max_problems is None else min(len(task), max_problems)
    info = get_dist_info(initialized_only=True)
    return list(range(info.rank, n, info.world_size))


def _prompt(tokenizer, conversation: dict) -> list[int]:
    # drop the reference answer: the prompt ends with <|assistant_start|>
    return tokenizer.render_for_completion({"messages": conversation["messages"][:-1]})


@torch.no_grad()
def run_categorical_eval(task: Task, tokenizer, model, batch_size: int = 8, max_problems: int | None = None,
                         device=None, progress: bool = True) -> dict:
    device = model_device(model, device)
    max_len = model_max_seq_len(model, None)
    ids = _problem_ids(task, max_problems)
    letter_cache: dict[str, int] = {}

    def letter_id(letter: str) -> int:
        if letter not in letter_cache:
            enc = tokenizer.encode(letter)
            if len(enc) != 1:
                raise RaychatError(f"answer letter {letter!r} is {len(enc)} tokens; categorical eval needs one token")
            letter_cache[letter] = enc[0]
        return letter_cache[letter]

    passed = cropped = 0
    bar = Progress(len(ids), desc=f"{type(task).__name__}", unit="q", disable=not progress or
                   get_dist_info(initialized_only=True).rank != 0)
    for b in range(0, len(ids), batch_size):
        convs = [task[i] for i in ids[b: b + batch_size]]
        prompts = [_prompt(tokenizer, c) for c in convs]
        if max_len is not None:   # too long for the model: keep the end (choices and the answer position)
            cropped += sum(len(p) > max_len for p in prompts)
            prompts = [p[-max_len:] for p in prompts]
        T = max(len(p) for p in prompts)
        x = torch.full((len(prompts), T), tokenizer.bos_id, dtype=torch.long)   # right padding: causal model
        for i, p in enumerate(prompts):
            x[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        with inference_attention(device):
            logits = model(x.to(device))                                       # (B, T, V)
        for i, (conv, p) in enumerate(zip(convs, prompts)):
            letters = conv["letters"]
            allowed = torch.tensor([letter_id(letter) for letter in letters], device=logits.device)
            pred = letters[int(logits[i, len(p) - 1, allowed].argmax())]
            passed += bool(task.evaluate(conv, pred))
        bar.update(len(convs), acc=passed / min(b + batch_size, len(ids)))
    bar.close()
    passed, total, cropped = _reduce_counts([passed, len(ids), cropped], device)
    return {"accuracy": passed / total if total else float("nan"), "num_passed": passed, "num_total": total,
            "num_cropped": cropped}


def _completion_text(tokenizer, prompt: list[int], ids: list[int]) -> str:
    """A completion as the chat layer shows it (tool use inline as <<expr=result>>, up to <|assistant_end|>);
    an echoed prompt is dropped first (engines differ)."""
    if len(ids) >= len(prompt) and ids[: len(prompt)] == prompt:
        ids = ids[len(prompt):]
    deltas = stream_reply(tokenizer, completion_events(tokenizer, ids), len(prompt))
    return "".join(display_text(d) for d in deltas)


def run_generative_eval(task: Task, tokenizer, engine, num_samples: int = 1, max_tokens: int = 512,
                        temperature: float = 0.0, top_k: int | None = 50, max_problems: int | None = None,
                        chunk: int = 32, seed: int = 0, progress: bool = True, device="cpu") -> dict:
    from raychat.engine import SamplingParams

    ids = _problem_ids(task, max_problems)
    max_len = getattr(engine, "max_seq_len", None)
    passed = too_long = 0
    bar = Progress(len(ids), desc=f"{type(task).__name__}", unit="q", disable=not progress or
                   get_dist_info(initialized_only=True).rank != 0)
    for b in range(0, len(ids), chunk):
        chunk_ids = ids[b: b + chunk]
        convs = [task[i] for i in chunk_ids]
        prompts = [_prompt(tokenizer, c) for c in convs]
        if max_len is not None:   # a prompt the engine cannot hold is a failed problem, not a crashed eval
            keep = [i for i, p in enumerate(prompts) if len(p) < max_len]
            too_long += len(prompts) - len(keep)
            bar.update(len(prompts) - len(keep))
            chunk_ids, convs, prompts = ([x[i] for i in keep] for x in (chunk_ids, convs, prompts))
            if not prompts:
                continue
        params = [SamplingParams(temperature=temperature, top_k=top_k, max_tokens=max_tokens, seed=seed + i,
                                 num_samples=num_samples) for i in chunk_ids]
        if hasattr(engine, "generate_many"):
            outs = [[c.tokens for c in comps] for comps in engine.generate_many(prompts, params)]
        else:
            outs = [engine.generate(p, sp) for p, sp in zip(prompts, params)]
        for conv, prompt, samples in zip(convs, prompts, outs):
            texts = [_completion_text(tokenizer, prompt, s) for s in samples]
            passed += any(task.evaluate(conv, t) for t in texts)
        bar.update(len(convs), acc=passed / max(1, bar.n + len(convs)))
    bar.close()
    passed, total, too_long = _reduce_counts([passed, len(ids), too_long], device)
    return {"accuracy": passed / total if total else float("nan"), "num_passed": passed, "num_total": total,
            "num_too_long": too_long}


def run_chat_eval(task_name: str, model, tokenizer, engine, max_problems: int | None = None, batch_size: int = 8,
                  num_samples: int = 1, max_tokens: int = 512, temperature: float = 0.0, top_k: int | None = 50,
                  data_dir=None, task: Task | None = None, device=None, progress: bool = True) -> dict:
    """Evaluate one named task (see `raychat.tasks.EVAL_TASK_NAMES`); `task` overrides the named dataset.
    Returns {"task", "eval_type", "accuracy", "centered", "baseline", "num_passed", "num_total", "seconds"}."""
    task = task if task is not None else eval_task(task_name, data_dir)
    t0 = time.perf_counter()
    if task.eval_type == "categorical":
        res = run_categorical_eval(task, tokenizer, model, batch_size=batch_size, max_problems=max_problems,
                                   device=device, progress=progress)
    elif task.eval_type == "generative":
        dev = model_device(model, device)
        res = run_generative_eval(task, tokenizer, engine, num_samples=num_samples, max_tokens=max_tokens,
                                  temperature=temperature, top_k=top_k, max_problems=max_problems,
                                  progress=progress, device=dev)
    else:
        raise RaychatError(f"task {task_name!r} has no evaluation (eval_type={task.eval_type!r})")
    baseline = BASELINES.get(task_name, 0.0)
    return {"task": task_name, "eval_type": task.eval_type, **res, "baseline": baseline,
            "centered": (res["accuracy"] - baseline) / (1.0 - baseline), "seconds": time.perf_counter() - t0}


def chatcore(results: dict) -> float:
    """Mean centered accuracy. `results` maps task name -> accuracy, or -> a `run_chat_eval` result dict."""
    if not results:
        raise RaychatError("ChatCORE needs at least one task result")
    centered = []
    for name, r in results.items():
        acc = r["accuracy"] if isinstance(r, dict) else float(r)
        if name not in BASELINES:
            raise RaychatError(f"no ChatCORE baseline for task {name!r}; known: {', '.join(BASELINES)}")
        b = BASELINES[name]
        centered.append((acc - b) / (1.0 - b))
    return sum(centered) / len(centered)
