"""``edge-se run CONFIG.toml`` and ``edge-se report RUN_DIR``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``run`` and ``report`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("run", help="run a sweep from a TOML config (cached, resumable)", formatter_class=fmt)
    p.add_argument("config", help="sweep config (TOML); see pipeline/config.py and configs/demo.toml")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument(
        "--report", action=argparse.BooleanOptionalAction, default=True, help="write the report when the sweep ends"
    )
    p.set_defaults(func=run_run)
    p = sub.add_parser("report", help="write report.md and report.html for a run directory", formatter_class=fmt)
    p.add_argument("run_dir", help="a directory written by `edge-se run`")
    p.set_defaults(func=run_report)


def run_run(args: argparse.Namespace) -> int:
    """Run the sweep, print a summary table, write the report; exit 1 if any cell failed."""
    from pipeline.config import load_config
    from pipeline.run import run_sweep
    from pipeline.summary import format_summary

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    print(
        f"edge-se run: {args.config} -> {out} ({len(cfg.models)} model(s), formats {','.join(cfg.formats)}, "
        f"dtypes {','.join(cfg.dtypes)}, policies {','.join(cfg.policies)}, devices {','.join(cfg.devices)})",
        flush=True,
    )
    summary = run_sweep(cfg, out)
    print(format_summary(out))
    if args.report:
        from pipeline.report import write_report

        print(json.dumps(write_report(out)))
    return 0 if summary.ok else 1


def run_report(args: argparse.Namespace) -> int:
    """Write the report of an existing run directory."""
    from pipeline.report import write_report

    print(json.dumps(write_report(args.run_dir)))
    return 0
