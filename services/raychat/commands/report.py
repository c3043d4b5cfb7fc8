"""`raychat report --run-dir R`: assemble R/report.md (plots in R/plots/) from what the stages wrote."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--run-dir", default=None, help="run directory (default ~/.cache/raychat/runs/default)")
    p.add_argument("--price-per-hour", type=float, default=None,
                   help="USD per hour of the hardware for the cost estimate (default: by hardware, "
                        "env RAYCHAT_PRICE_PER_HOUR)")


def run(args):
    from pathlib import Path

    from raychat.common import RaychatError, resolve_run_dir
    from raychat.report import build_report

    if args.run_dir and not Path(args.run_dir).expanduser().is_dir():
        raise RaychatError(f"run directory {args.run_dir} does not exist")
    out = build_report(resolve_run_dir(args.run_dir), args.price_per_hour)
    print(f"wrote {out}")
    return 0
