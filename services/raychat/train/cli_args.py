"""Flags from a job's config dataclass: every field becomes `--field-name` (help = the field's comment in the
dataclass source), with no argparse default, so that only flags the user gave override the preset. Defaults
live in the dataclass and the preset functions only."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

from raychat.common import RaychatError


def _field_comments(cls) -> dict[str, str]:
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for m in re.finditer(r"^\s+(\w+):[^=\n]+=[^#\n]*#\s*(.+)$", src, flags=re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


def _bool(s: str) -> bool:
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_config_args(p: argparse.ArgumentParser, cls, presets: dict | None = None, skip: tuple = ("extra",)) -> None:
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    if presets:
        p.add_argument("--preset", default=None, choices=sorted(presets), help="named preset to start from")
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_ = f"{comments.get(f.name, '')} (default {getattr(defaults, f.name)!r})".strip()
        if typ is bool:
            p.add_argument(flag, dest=f.name, nargs="?", const=True, type=_bool, default=argparse.SUPPRESS,
                           help=help_)
            p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif typ in (int, float, str):
            p.add_argument(flag, dest=f.name, type=typ, default=argparse.SUPPRESS, help=help_)


def config_from_args(args: argparse.Namespace, cls, presets: dict | None = None):
    """preset (or the dataclass defaults) + the flags the user gave; config errors become one-line errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    preset = getattr(args, "preset", None)
    try:
        base = presets[preset]() if preset else cls()
        return dataclasses.replace(base, **given)
    except (ValueError, TypeError) as e:
        raise RaychatError(str(e)) from None
