"""``edge-se run CONFIG.toml`` and ``edge-se report RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.gates import Violation


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``run`` and ``report`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("run", help="run a sweep from a TOML config (cached, resumable)", formatter_class=fmt)
    p.add_argument("config", help="sweep config (TOML); see pipeline/config.py and configs/demo.toml")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument(
        "--report", action=argparse.BooleanOptionalAction, default=True, help="write the report when the sweep ends"
    )
    p.add_argument(
        "--executor",
        default=None,
        help="local (a pool of --jobs workers) or ray; default: [run].executor, else local",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto or HOST:PORT; default: [run].address, else a local head",
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="cells at once (1: serial); default: [run].jobs, else the usable cores"
    )
    p.set_defaults(func=run_run)
    p = sub.add_parser("report", help="write report.md and report.html for a run directory", formatter_class=fmt)
    p.add_argument("run_dir", help="a directory written by `edge-se run`")
    p.set_defaults(func=run_report)


def run_run(args: argparse.Namespace) -> int:
    """Run the sweep, print a summary table, judge the gates, write the report; exit 1 if a cell failed or a gate."""
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
    summary = run_sweep(cfg, out, executor=args.executor, address=args.address, jobs=args.jobs)
    print(format_summary(out))
    violations = _judge_gates(cfg, out)
    if args.report:
        from pipeline.report import write_report

        print(json.dumps(write_report(out)))
    return 0 if summary.ok and not violations else 1


def _judge_gates(cfg: RunConfig, out: Path) -> list[Violation]:
    """Check the sweep's release gates; write gates.json (removed when there are none); one line per violation."""
    from pipeline.collect import load_cells
    from pipeline.gates import VERDICT_FILE, check, write_verdict

    if not cfg.gates.active and not cfg.model_gates:
        (out / VERDICT_FILE).unlink(missing_ok=True)
        return []
    violations = check(load_cells(out), cfg.gates, cfg.model_gates)
    write_verdict(out, cfg.gates, cfg.model_gates, violations)
    for v in violations:
        print(f"edge-se run: {v.line()}", file=sys.stderr)
    print(f"edge-se run: gates: {'all met' if not violations else f'{len(violations)} violation(s)'}",
          file=sys.stderr)
    return violations


def run_report(args: argparse.Namespace) -> int:
    """Write the report of an existing run directory."""
    from pipeline.report import write_report

    print(json.dumps(write_report(args.run_dir)))
    return 0
