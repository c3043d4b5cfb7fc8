"""`raychat chat`: one-shot and interactive, against a tiny random-init checkpoint (conftest's tiny_run_dir)."""

from __future__ import annotations

import io

import pytest

from raychat.cli import main


@pytest.fixture(scope="module")
def loaded(tiny_run_dir):
    from raychat.checkpoint import load_model

    model, tok, _ = load_model(tiny_run_dir, stage="sft")
    return model, tok


def expected_reply(loaded, messages=None, raw_text=None, max_tokens=12):
    """What the CLI should print for a greedy reply: the engine's tokens, through the chat layer."""
    from raychat.chat import ReplyAssembler
    from raychat.engine import Engine, SamplingParams

    model, tok = loaded
    eng = Engine(model, tok, max_batch_size=1)
    prompt = tok.encode(raw_text, prepend=tok.bos_id) if raw_text is not None else tok.render_for_completion(
        {"messages": messages})
    rid = eng.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    asm, out = ReplyAssembler(tok), []
    while eng.has_work():
        for ev in eng.step():
            assert ev.request_id == rid
            out += asm.feed(ev)
    out += asm.finish()
    fmt = {"token": "{}", "tool_call": "<<{}", "tool_result": "={}>>"}
    return "".join(fmt[d.type].format(d.text) for d in out), asm


def test_one_shot_prints_reply(tiny_run_dir, loaded, capsys):
    rc = main(["chat", "--run-dir", str(tiny_run_dir), "-p", "Hello there", "--temperature", "0",
               "--max-tokens", "12", "--stats"])
    out, err = capsys.readouterr()
    want, _ = expected_reply(loaded, [{"role": "user", "content": "Hello there"}])
    assert rc == 0 and out == want + "\n"
    assert "tokens" in err and "tok/s" in err


def test_compiled_decode_gives_the_same_reply(tiny_run_dir, loaded, capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compiled decoding is off")  # the compiled path, not the fallback
        rc = main(["chat", "--run-dir", str(tiny_run_dir), "-p", "Hello there", "--temperature", "0",
                   "--max-tokens", "12", "--compile-decode"])
    out, _ = capsys.readouterr()
    want, _ = expected_reply(loaded, [{"role": "user", "content": "Hello there"}])
    assert rc == 0 and out == want + "\n"


def test_one_shot_base_stage_is_plain_completion(tiny_run_dir, loaded, capsys):
    rc = main(["chat", "--run-dir", str(tiny_run_dir), "--stage", "base", "-p", "The cat", "--temperature", "0",
               "--max-tokens", "12"])
    out, _ = capsys.readouterr()
    want, _ = expected_reply(loaded, raw_text="The cat")  # base and sft hold the same weights in the fixture
    assert rc == 0 and out == want + "\n"


def test_interactive_commands_and_multi_turn(tiny_run_dir, loaded, capsys, monkeypatch):
    lines = ["/temp 0", "/topk 7", "/temp nope", "hi", "how are you?", "/clear", "hi", "/bogus", "/quit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    rc = main(["chat", "--run-dir", str(tiny_run_dir), "--max-tokens", "12", "--top-k", "0"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "(temperature = 0)" in out and "(top_k = 7)" in out and "bad value for /temp" in out
    assert "unknown command /bogus" in out and "(conversation cleared)" in out
    # top_k=7 at temperature 0 is still greedy: the replies are the engine's greedy replies
    first, asm = expected_reply(loaded, [{"role": "user", "content": "hi"}])
    turn2 = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": asm.content()},
             {"role": "user", "content": "how are you?"}]
    second, _ = expected_reply(loaded, turn2)
    replies = [chunk.split("\n\nUser: ")[0] for chunk in out.split("Assistant: ")[1:]]
    assert replies == [first, second, first]  # after /clear the same question gets the first answer again


def test_context_overflow_and_bad_paths_are_one_line_errors(tiny_run_dir, tmp_path, capsys):
    rc = main(["chat", "--run-dir", str(tiny_run_dir), "-p", "x" * 500, "--max-seq-len", "64"])
    _, err = capsys.readouterr()
    assert rc == 2 and "exceeds the context of 64 tokens" in err and "Traceback" not in err
    rc = main(["chat", "--run-dir", str(tmp_path / "nowhere"), "-p", "hi"])
    _, err = capsys.readouterr()
    assert rc == 2 and "no sft checkpoint" in err
    rc = main(["chat", "--run-dir", str(tiny_run_dir), "-p", "hi", "--temperature", "-1"])
    _, err = capsys.readouterr()
    assert rc == 2 and "temperature" in err
