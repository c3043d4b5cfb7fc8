"""The Grafana dashboards query only metric names raychat's code really exports.

Single source of truth: the modules that register the metrics. `raychat.serve.metrics` and
`raychat.train.metrics` each define `METRIC_NAMES`, a tuple of the full exposed base names (as Prometheus
shows them, e.g. "raychat:time_to_first_token_seconds", "raychat:prompt_tokens_total", "raychat_train_loss").
A dashboard query may use a base name or its exposition suffixes (_bucket/_sum/_count of a histogram, _total
of a counter registered without it).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(raychat[_:][A-Za-z0-9_:]*)")
SUFFIXES = ("", "_bucket", "_sum", "_count", "_total")
PROM_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")  # the exposition format's metric-name grammar


def exported_names() -> set[str]:
    names: set[str] = set()
    for module in ("raychat.serve.metrics", "raychat.train.metrics"):
        mod = importlib.import_module(module)
        got = mod.METRIC_NAMES
        assert isinstance(got, tuple) and got and all(isinstance(n, str) for n in got), module
        for n in got:
            assert PROM_NAME.match(n), f"{module}: {n!r} is not a valid Prometheus metric name"
        names.update(got)
    return names


def dashboard_references() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(p.read_text())
        for panel in d["panels"]:
            for t in panel.get("targets", []):
                for m in METRIC_RE.findall(t["expr"]):
                    out.setdefault(m, set()).add(f"{p.name}: {panel['title']}")
    return out


def test_dashboards_reference_only_exported_metrics():
    exported = exported_names()
    valid = {n + s for n in exported for s in SUFFIXES}
    refs = dashboard_references()
    assert refs, "no raychat metric on any dashboard"
    unknown = {m: sorted(where) for m, where in refs.items() if m not in valid}
    assert not unknown, f"dashboard queries name metrics the code does not export: {unknown}"


def test_every_exported_metric_is_on_a_dashboard():
    refs = dashboard_references()
    shown = {m.removesuffix(s) for m in refs for s in SUFFIXES if s and m.endswith(s)} | set(refs)
    missing = sorted(n for n in exported_names() if n not in shown and n.removesuffix("_total") not in shown)
    assert not missing, f"exported metrics without a panel (add them in deploy/grafana/dashboards.py): {missing}"
