"""raychat.progress: the plain-log form prints each state once; the terminal form ends with one newline."""

import io

from raychat.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_form_prints_final_line_once():
    # regression: the update that reaches the total drew the full line and close() drew it again
    out = io.StringIO()
    bar = Progress(3, desc="tok", unit="docs", file=out, log_interval=1e9)
    for _ in range(3):
        bar.update(1)
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["tok 100% |####################| 3/3 docs"]


def test_log_form_close_draws_what_changed_since_last_line():
    out = io.StringIO()
    bar = Progress(10, desc="x", file=out, log_interval=1e9)
    bar.update(10)             # full line drawn
    bar.set_postfix(loss=1.5)  # changed after it: close must show it
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "loss=1.5" in lines[1] and "loss" not in lines[0]


def test_log_form_close_without_updates_prints_one_line():
    out = io.StringIO()
    Progress(None, desc="empty", unit="q", file=out).close()
    assert out.getvalue().splitlines()[0].startswith("empty 0 q [")
    assert len(out.getvalue().splitlines()) == 1


def test_terminal_form_redraws_in_place_and_ends_with_one_newline():
    out = _Tty()
    with Progress(2, desc="t", file=out, min_interval=0.0) as bar:
        bar.update(1)
        bar.update(1)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r\x1b[K") == 3  # two updates and the final redraw that adds the newline


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    with Progress(2, file=out, disable=True) as bar:
        bar.update(2)
    assert out.getvalue() == ""
