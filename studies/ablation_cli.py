"""``edge-se study ablation CONFIG [--out DIR] [--seeds N] [--no-export]``: run the SE ablation study.

Writes ``DIR/study_ablation.md`` (table and verdicts), ``DIR/study_ablation.jsonl`` (one JSON line
per cell, every input that decides its number recorded) and ``DIR/study_ablation.png``
(accuracy against parameters); cells are cached in ``DIR/cells/`` so a rerun resumes. The
resolved config goes to stderr at start-up, the summary rows to stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_se.argtypes import number
from edge_se.errors import EdgeSeError

STUDY_COMMAND = "study"
"""The ``edge-se`` subcommand that groups the studies (``ablation`` here, others beside it)."""


def study_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The ``edge-se study`` sub-subparsers, made once and shared by every study plugin.

    A second ``sub.add_parser("study")`` would raise (argparse refuses duplicate names), so a
    study plugin asks here: the first caller creates the group, later ones get the same one.
    """
    parser = sub.choices.get(STUDY_COMMAND)
    if parser is None:
        parser = sub.add_parser(STUDY_COMMAND, help="SE studies: ablation of gate, placement, ratio and no-SE")
        group = parser.add_subparsers(dest="study", metavar="STUDY", parser_class=type(parser))
        group.required = True
        parser.set_defaults(_study_group=group)
        parser._study_group = group  # type: ignore[attr-defined]
    return parser._study_group  # type: ignore[attr-defined,no-any-return]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``study ablation`` to the ``edge-se`` parser."""
    p = study_subparsers(sub).add_parser(
        "ablation", help="train, export and time SE variants (no-SE, r, placement, gate) over seeds",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="study TOML, e.g. configs/study_ablation.toml")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="output folder (cells cached in OUT/cells)")
    p.add_argument("--seeds", type=number("--seeds", int), default=None,
                   help="seeds per variant (default: the config's)")
    p.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                   help="int8 export and local latency of seed 0 per variant (default: the config's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the config, run every cell (cached), write the table, JSON lines and plot."""
    from contract.files import write_text
    from edge_se.registry import get_spec
    from studies.ablation import config_json, load_config, variants
    from studies.ablation_report import markdown, plot, summarize, verdicts
    from studies.ablation_run import cpu_info, run_study

    cfg = load_config(args.config)
    changes: dict[str, Any] = {}
    if args.seeds is not None:
        changes["seeds"] = args.seeds
    if args.export is not None:
        changes["export"] = args.export
    if changes:
        cfg = cfg.with_(**changes)
    vs = variants(get_spec(cfg.model), cfg)
    labels = {label for v in vs for label in (v.name, *v.also)}
    unknown = sorted(set(cfg.export_variants or ()) - labels)
    if unknown:
        raise EdgeSeError(f"{args.config}: export.variants: unknown variant {unknown[0]!r}; "
                          f"valid: {', '.join(sorted(labels))}")
    print(f"edge-se study ablation: {json.dumps(config_json(cfg), default=str)}", file=sys.stderr)
    print(f"edge-se study ablation: {len(vs)} variant(s) x {cfg.seeds} seed(s): {', '.join(v.name for v in vs)}",
          file=sys.stderr)
    import torch

    torch.set_num_threads(cfg.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    records = run_study(cfg, vs, out)
    rows = summarize(records)
    verdict_list = verdicts(rows)
    trains = [r for r in records if r["kind"] == "train"]
    notes = []
    if not cfg.export:
        notes.append("int8 export and latency were not run (--no-export or export.enabled = false).")
    elif cfg.export_variants is not None:
        notes.append(f"int8 export and latency for {', '.join(cfg.export_variants)} only (export.variants in "
                     f"the config, to fit the time available); `-` in the int8 columns of the others.")
    for e in (r for r in records if r["kind"] == "export"):
        for fmt, f in e["formats"].items():
            for failed in f.get("failed_policies") or ([] if f.get("status") == "ok" else [f]):
                notes.append(f"{e['variant']} int8 {fmt} ({failed.get('policy', 'ptq')}): {failed.get('status')}: "
                             f"{failed.get('error')}")
            if f.get("status") == "ok" and f.get("policy", "ptq") != "ptq":
                notes.append(f"{e['variant']} int8 {fmt}: exported with the fallback policy {f['policy']} "
                             "(marked with its name in the table)")
    header = {"command": f"edge-se study ablation {args.config} --out {out}"
                         + (f" --seeds {args.seeds}" if args.seeds is not None else "")
                         + ("" if args.export is None else (" --export" if args.export else " --no-export")),
              "config": config_json(cfg), "cpu": cpu_info(), "versions": trains[0]["versions"] if trains else {},
              "held_out": trains[0]["held_out"] if trains else None, "notes": notes}
    lines = [json.dumps(r, sort_keys=True, default=str) for r in records]
    lines += [json.dumps({"kind": "summary", **r}, sort_keys=True, default=str) for r in rows]
    lines += [json.dumps({"kind": "verdict", **v}, sort_keys=True, default=str) for v in verdict_list]
    write_text(out / "study_ablation.jsonl", "\n".join(lines) + "\n")
    write_text(out / "study_ablation.md", markdown(rows, verdict_list, header))
    plot(rows, out / "study_ablation.png")
    for r in rows:
        print(json.dumps({"kind": "summary", **r}, sort_keys=True, default=str))
    for v in verdict_list:
        print(v["text"], file=sys.stderr)
    print(f"edge-se study ablation: wrote {out / 'study_ablation.md'}, {out / 'study_ablation.jsonl'}, "
          f"{out / 'study_ablation.png'}", file=sys.stderr)
    return 0


__all__ = ["STUDY_COMMAND", "register", "run", "study_subparsers"]
