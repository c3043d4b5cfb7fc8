"""A tiny progress bar with rate and ETA on stderr (no tqdm: one dependency less, and Ray-friendly).

On a terminal it redraws one line (at most every `min_interval` s); when stderr is not a terminal (logs, Ray
workers, CI) it prints a plain line at most every `log_interval` s instead, so logs stay readable.

    bar = Progress(total=1000, desc="tokenize", unit="docs")
    for ...:
        bar.update(1, loss=3.21)       # postfix values are shown as key=value
    bar.close()
"""

from __future__ import annotations

import sys
import threading
import time


def _fmt_time(s: float) -> str:
    if s != s or s == float("inf"):  # nan / inf
        return "?"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _fmt_num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def _fmt_val(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Progress(total, desc): `.update(n=1, **postfix)`, `.close()`; also a context manager. Thread-safe.
    total=None shows a count and rate without percentage/ETA."""

    def __init__(self, total: float | None, desc: str = "", unit: str = "it", file=None, min_interval: float = 0.2,
                 log_interval: float = 10.0, disable: bool = False):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.disable = disable
        self.n = 0.0
        self.postfix: dict = {}
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self._drawn_full = False
        self._dirty = True        # state changed since the last line written (nothing written yet)
        try:
            self._tty = self.file.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._interval = min_interval if self._tty else log_interval

    def update(self, n: float = 1, **postfix) -> None:
        with self._lock:
            self.n += n
            self._dirty = True
            if postfix:
                self.postfix.update(postfix)
            now = time.monotonic()
            finished = self.total is not None and self.n >= self.total and not self._drawn_full
            if finished or now - self._last >= self._interval:
                self._drawn_full = self._drawn_full or finished
                self._last = now
                self._draw(final=False)

    def set_postfix(self, **postfix) -> None:
        with self._lock:
            self.postfix.update(postfix)
            self._dirty = True

    def format(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.n / self.total, 1.0)
            width = 20
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            eta = max(self.total - self.n, 0) / rate if rate > 0 else float("inf")
            parts.append(f"{frac * 100:3.0f}% |{bar}| {_fmt_num(self.n)}/{_fmt_num(self.total)} {self.unit}")
            parts.append(f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {_fmt_num(rate)} {self.unit}/s]")
        else:
            parts.append(f"{_fmt_num(self.n)} {self.unit} [{_fmt_time(elapsed)}, {_fmt_num(rate)} {self.unit}/s]")
        if self.postfix:
            parts.append(" ".join(f"{k}={_fmt_val(v)}" for k, v in self.postfix.items()))
        return " ".join(parts)

    def _draw(self, final: bool) -> None:
        self._dirty = False
        if self.disable:
            return
        line = self.format()
        if self._tty:
            self.file.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # a log line is final as written; a terminal line still needs its newline
            if self._tty or self._dirty:
                self._draw(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
