"""`raychat chat`: talk to a checkpoint in the terminal, streaming, multi-turn; `-p TEXT` for one shot.

    raychat chat --run-dir runs/tiny                               # interactive, the sft checkpoint
    raychat chat --run-dir runs/tiny --stage rl -p "What is 12*7?"  # one shot: prints the reply, exits
    raychat chat --run-dir runs/tiny --stage base -p "The capital of France is"   # base: plain completion
    raychat chat --checkpoint runs/tiny/checkpoints/sft/step_000800 --temperature 0 --max-tokens 128

Interactive commands: /clear (new conversation), /temp 0.8, /topk 50 (0 = off), /help, /quit (or Ctrl-D).
Ctrl-C while the model is answering stops that answer (the partial reply stays in the conversation).
Calculator tool calls show inline as <<expression=result>>, the way GSM8K annotates them.

A base checkpoint has never seen the chat template, so `--stage base` (or `--raw`) continues plain text:
each input is a fresh document `<|bos|> text` and the model writes on.
"""

from __future__ import annotations

import sys

HELP = "/clear new conversation · /temp X temperature · /topk N top-k (0 = off) · /quit"


def add_arguments(p):
    p.add_argument("--run-dir", default=None,
                   help="run directory holding tokenizer/ and checkpoints/<stage>/ (default ~/.cache/raychat/runs/"
                        "default)")
    p.add_argument("--stage", default="sft", choices=["base", "sft", "rl"], help="checkpoint stage to load")
    p.add_argument("--checkpoint", default=None,
                   help="explicit checkpoint (step dir, stage dir or run dir); overrides --run-dir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("-p", "--prompt", default=None, help="one shot: answer this message, print the reply and exit")
    p.add_argument("--raw", action="store_true",
                   help="plain text completion instead of the chat template (default for --stage base)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature, 0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens, 0 = no limit")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1], 1 = off")
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per reply (also stops at the context end)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible replies (default: random)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="context in tokens, prompt + reply (default: the model's sequence_len)")
    p.add_argument("--device", default=None, help="cpu | cuda | mps (default: detected)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on SM80+ GPUs, else fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--compile-decode", action="store_true",
                   help="CPU: compile the decode step with torch.compile at start (seconds with a warm compile "
                        "cache, tens of seconds cold); batch-1 decode ~1.6x faster at d4 (benchmarks/RESULTS.md, "
                        "decode-peer)")
    p.add_argument("--stats", action="store_true", help="print tokens, TTFT and tokens/s after each reply (stderr)")


class ChatSession:
    """The conversation state and sampling settings behind the terminal; separate from I/O for tests."""

    def __init__(self, engine, tokenizer, params, raw: bool = False):
        self.engine, self.tokenizer, self.params, self.raw = engine, tokenizer, params, raw
        self.messages: list[dict] = []

    def command(self, line: str) -> str | None:
        """Handle a /command; returns the text to show, or None for /quit."""
        from dataclasses import replace

        from raychat.chat import effective_temperature
        from raychat.common import RaychatError

        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit", "/q"):
                return None
            if name == "/clear":
                self.messages.clear()
                return "(conversation cleared)"
            if name == "/temp":
                self.params = replace(self.params, temperature=effective_temperature(float(arg)))
                return f"(temperature = {self.params.temperature:g})"
            if name == "/topk":
                self.params = replace(self.params, top_k=int(arg))
                return f"(top_k = {self.params.top_k or 'off'})"
            if name == "/help":
                return HELP
        except (ValueError, RaychatError) as e:
            return f"(bad value for {name}: {e})"
        return f"(unknown command {name}; {HELP})"

    def reply(self, text: str, out) -> dict:
        """Stream the answer to `text` into `out` (a text stream); returns the final "done" delta as a dict."""
        from raychat.chat import (
            Reply,
            display_text,
            engine_events,
            render_chat_prompt,
            render_text_prompt,
            stream_reply,
        )

        if not self.raw:
            self.messages.append({"role": "user", "content": text})
        done = {"finish_reason": "cancelled", "usage": {}, "timings": {}}
        stream = reply = None
        try:
            prompt = render_text_prompt(self.tokenizer, text) if self.raw else render_chat_prompt(self.tokenizer,
                                                                                                 self.messages)
            reply = Reply(self.tokenizer, len(prompt))
            stream = stream_reply(self.tokenizer, engine_events(self.engine, prompt, self.params), len(prompt),
                                  reply=reply)
            for d in stream:
                if d.type == "done":
                    done = {"finish_reason": d.finish_reason, "usage": d.usage, "timings": d.timings}
                else:
                    out.write(display_text(d))
                out.flush()
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()  # cancels the request in the engine
                out.write("".join(display_text(d) for d in reply.asm.finish()))
        except BaseException:
            if not self.raw:
                self.messages.pop()  # the turn never happened (e.g. the conversation outgrew the context)
            raise
        finally:
            if stream is not None:
                stream.close()
        if not self.raw:
            content = reply.content() if reply is not None else ""
            if content:
                self.messages.append({"role": "assistant", "content": content})
            else:
                self.messages.pop()  # an empty reply cannot be rendered back; forget the turn
        return done


def _stats_line(done: dict) -> str:
    u, t = done.get("usage", {}), done.get("timings", {})
    return (f"[{u.get('completion_tokens', 0)} tokens, finish={done['finish_reason']}, "
            f"ttft {t.get('ttft_ms', 0):.0f} ms, {t.get('tokens_per_second', 0):.1f} tok/s]")


def run(args):
    import torch

    from raychat.chat import sampling_params
    from raychat.checkpoint import load_model
    from raychat.common import RaychatError, default_runs_root
    from raychat.engine import Engine

    if args.threads is not None:
        if args.threads < 1:
            raise RaychatError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    params = sampling_params(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             max_tokens=args.max_tokens, seed=args.seed)
    path = args.checkpoint or args.run_dir or (default_runs_root() / "default")
    model, tokenizer, meta = load_model(path, stage=args.stage, step=args.step, device=args.device,
                                       dtype=args.dtype)
    if tokenizer is None:
        raise RaychatError(f"no tokenizer found for checkpoint {meta['checkpoint_dir']} (expected <run>/tokenizer)")
    engine = Engine(model, tokenizer, max_batch_size=1, max_seq_len=args.max_seq_len, decode_layout="auto",
                    compile_decode=args.compile_decode)
    raw = args.raw or args.stage == "base"
    session = ChatSession(engine, tokenizer, params, raw=raw)

    if args.prompt is not None:
        done = session.reply(args.prompt, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.stats:
            print(_stats_line(done), file=sys.stderr)
        return 0

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    mode = "completion (base model: each line is a new document)" if raw else "chat"
    print(f"raychat chat: {meta['checkpoint_dir']} ({mode}, step {meta.get('step')}, context "
          f"{engine.max_seq_len} tokens, device {model.get_device()})", file=sys.stderr)
    print(HELP, file=sys.stderr)
    prefix_user, prefix_bot = ("\n> ", "") if raw else ("\nUser: ", "Assistant: ")
    while True:
        try:
            line = input(prefix_user)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line.strip():
            continue
        if line.startswith("/"):
            msg = session.command(line)
            if msg is None:
                return 0
            print(msg)
            continue
        sys.stdout.write(prefix_bot)
        try:
            done = session.reply(line, sys.stdout)
        except RaychatError as e:  # e.g. the conversation no longer fits the context
            print(f"\n(error: {e}; /clear starts over)")
            continue
        sys.stdout.write("\n")
        if args.stats or done["finish_reason"] == "length":
            print(_stats_line(done), file=sys.stderr)
