"""``edge-se latency-table`` (measure kernels on a device, fit a table) and ``edge-se scale`` (search under a budget).

::

    edge-se latency-table --device local --format pte --dtype int8 [--out FILE] [--build PHI@RES,...]
    edge-se scale --family efficientnet --device local --budget-ms 5 [--format pte] [--dtype int8] [--json]

A table lives at :func:`default_table_path` unless ``--out``/``--table`` say otherwise, so ``scale``
finds the one ``latency-table`` wrote for the same family, device, format, dtype and threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from contract.formats import DTYPES
from contract.measure import add_arguments as add_measure_arguments
from contract.measure import from_namespace
from edge_se.argtypes import number
from edge_se.cliargs import add_format
from edge_se.errors import EdgeSeError

TABLES_DIR = Path("latency_tables")
"""Where tables go by default (relative to the working directory)."""


def default_table_path(family: str, device: str, fmt: str, dtype: str, threads: int) -> Path:
    """``latency_tables/{family}_{device}_{format}_{dtype}_{threads}t.json`` (the device name made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", device).strip("-")
    return TABLES_DIR / f"{family}_{safe}_{fmt}_{dtype}_{threads}t.json"


def _common(p: argparse.ArgumentParser, *, table_flag: str, table_help: str) -> None:
    from latency.build import FAMILIES
    from latency.measure import TABLE_MEASURE

    p.add_argument("--family", default=FAMILIES[0], help=f"model family ({', '.join(FAMILIES)})")
    p.add_argument("--device", required=True,
                   help="local, qemu-aarch64, ssh://[user@]host[:port], adb://SERIAL or an inventory name")
    add_format(p)
    p.add_argument("--dtype", choices=[d for d in DTYPES if d in ("fp32", "int8")], default="int8",
                   help="artifact dtype")
    p.add_argument(table_flag, type=Path, default=None, metavar="FILE", help=table_help)
    p.add_argument("--work", type=Path, default=None, metavar="DIR",
                   help="folder for the probe and network artifacts (default: runs/latency/<table name>); "
                        "artifacts already there are reused")
    p.add_argument("--jobs", type=number("--jobs", int), default=1,
                   help="export worker processes; on an emulated device also artifacts counted side by side "
                        "(instruction counts do not move with load; timing on a timed device runs alone)")
    p.add_argument("--runner", choices=("auto", "python", "native"), default=None,
                   help=".pte runner where both exist (auto: Python runtime if importable; default: auto for a new "
                        "table, the table's own runner for scale's measured check)")
    p.add_argument("--inventory", type=Path, default=None, help="device inventory TOML")
    p.add_argument("--passes", type=number("--passes", int), default=None,
                   help="timing passes over all artifacts, each in its own shuffled order; an artifact's value is "
                        "the median of its passes (default: 3, 1 on an emulated device: instruction counts do not "
                        "drift)")
    add_measure_arguments(p.add_argument_group("measurement (contract.measure.MeasureSpec)"), defaults=TABLE_MEASURE)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``latency-table`` and ``scale`` to the ``edge-se`` parser."""
    from latency.build import DEFAULT_BUILD

    t = sub.add_parser("latency-table", help="measure every kernel of a build set on a device and fit a latency "
                       "table that predicts any compound-scaled variant")
    _common(t, table_flag="--out", table_help="where to write the table (default: latency_tables/<family>_<device>_"
            "<format>_<dtype>_<threads>t.json)")
    t.add_argument("--build", default=DEFAULT_BUILD, metavar="PHI@RES,...",
                   help="the networks whose kernels are probed (and which are measured whole for the assembly fit)")
    t.set_defaults(func=run_table)

    s = sub.add_parser("scale", help="the largest compound-scaled network under a latency budget on a device: "
                       "predicted from its latency table, the best candidates built and measured")
    _common(s, table_flag="--table", table_help="the latency table (default: the latency-table default path)")
    s.add_argument("--budget-ms", type=number("--budget-ms", float, minimum=None), required=True,
                   help="latency budget per inference (ms, > 0)")
    s.add_argument("--phi-range", default="-3:3:0.25", metavar="LO:HI:STEP", help="real-valued phi grid")
    s.add_argument("--resolution-range", default="96:384:16", metavar="LO:HI:STEP",
                   help="input side grid, pixels (multiples of 8)")
    s.add_argument("--around", default="1.0", metavar="F[,F...]",
                   help="width and depth factors around the compound rule (e.g. 0.9,1,1.1: 9 shapes per point)")
    s.add_argument("--top", type=number("--top", int), default=3, help="candidates built and measured per round")
    s.add_argument("--rounds", type=number("--rounds", int), default=3, help="measurement rounds at most")
    s.add_argument("--plot", type=Path, default=None, metavar="PNG", help="Pareto plot: MACs vs latency, B0-B7, budget")
    s.add_argument("--json", action="store_true", help="print one JSON object (chosen, candidates, ...)")
    s.set_defaults(func=run_scale)


def _target(args: argparse.Namespace) -> Any:
    from latency.build import check_family
    from latency.measure import Target, default_passes

    check_family(args.family)
    measure = from_namespace(args)
    return Target(device=args.device, fmt=args.format, dtype=args.dtype, runner=args.runner or "auto", measure=measure,
                  inventory=str(args.inventory) if args.inventory else None, jobs=args.jobs, seed=measure.seed,
                  passes=default_passes(args.device, args.passes))


def _check_device(target: Any) -> None:
    """An unknown device or an unreadable inventory: one line, before anything is built."""
    from device_bench import inventory
    from device_bench.transports import resolve

    resolve(target.device, inventory.load(target.inventory))


def _table_path(args: argparse.Namespace, given: Path | None) -> Path:
    return given if given is not None else default_table_path(args.family, args.device, args.format, args.dtype,
                                                              args.measure_threads)


def _work(args: argparse.Namespace, table_path: Path) -> Path:
    return args.work if args.work is not None else Path("runs/latency") / table_path.stem


def run_table(args: argparse.Namespace) -> int:
    """``edge-se latency-table``: build, save, print a one-line summary (JSON on stdout)."""
    from latency.build import build_latency_table, parse_points
    from latency.table import save

    target = _target(args)
    points = parse_points(args.build)
    _check_device(target)
    out = _table_path(args, args.out)
    t0 = time.perf_counter()
    table, _ = build_latency_table(target, family=args.family, points=points, work=_work(args, out))
    save(table, out)
    fit = [{"name": n["name"], "resolution": n["resolution"], "measured": n["measured"],
            "predicted": table.predict_own(n)} for n in table.networks]
    print(json.dumps({"table": str(out), "entries": len(table.entries), "unit": table.unit,
                      "assembly": table.assembly_dict(), "networks": fit,
                      "wall_s": round(time.perf_counter() - t0, 1)}, sort_keys=True))
    return 0


def _range(text: str, flag: str, kind: type) -> list[Any]:
    from latency.search import frange

    try:
        lo, hi, step = (float(x) for x in text.split(":"))
    except ValueError:
        raise EdgeSeError(f"{flag} {text!r}: expected LO:HI:STEP, e.g. -3:3:0.25") from None
    if hi < lo:
        raise EdgeSeError(f"{flag} {text!r}: HI must be >= LO")
    values = frange(lo, hi, step)
    return [int(v) for v in values] if kind is int else values


def run_scale(args: argparse.Namespace) -> int:
    """``edge-se scale``: predict the grid, measure the best, print the choice (or one JSON object)."""
    from latency import table as lt
    from latency.build import measure_networks, variant
    from latency.search import check_budget, make_grid, search

    check_budget(args.budget_ms)  # before anything is read or built
    target = _target(args)
    _check_device(target)
    path = _table_path(args, args.table)
    if not path.is_file():
        raise EdgeSeError(f"{path}: no latency table for {args.family} on {args.device} ({args.format} {args.dtype}, "
                          f"{target.measure.threads} thread(s)); build it with `edge-se latency-table --family "
                          f"{args.family} --device {args.device} --format {args.format} --dtype {args.dtype}`")
    table = lt.load(path)
    if (table.family, table.format, table.dtype) != (args.family, args.format, args.dtype):
        raise EdgeSeError(f"{path}: a {table.family} {table.format} {table.dtype} table, not {args.family} "
                          f"{args.format} {args.dtype}")
    if table.unit != "ms":
        raise EdgeSeError(f"{path}: its unit is {table.unit} (an emulated device); --budget-ms needs a timed device")
    if args.runner is None:  # the measured check times the way the table's entries were timed
        target = dataclasses.replace(target, runner=str(table.meta.get("runner", "auto")))
    try:
        factors = [float(f) for f in args.around.split(",") if f.strip()]
    except ValueError:
        raise EdgeSeError(f"--around {args.around!r}: expected numbers like 0.9,1,1.1") from None
    if not factors or min(factors) <= 0:
        raise EdgeSeError(f"--around {args.around!r}: factors must be > 0")
    resolutions = [r for r in _range(args.resolution_range, "--resolution-range", int) if r % 8 == 0 and r >= 32]
    if not resolutions:
        raise EdgeSeError(f"--resolution-range {args.resolution_range!r}: no multiple of 8 pixels >= 32 in it")
    t0 = time.perf_counter()
    grid = make_grid(lambda phi, res, w, d: variant(phi, res, width=w, depth=d, family=args.family), table.predict,
                     phis=_range(args.phi_range, "--phi-range", float), resolutions=resolutions, factors=factors)
    work = _work(args, path)

    def measure(cands: list[Any]) -> list[float]:
        print(f"edge-se scale: measuring {', '.join(f'{c.name}@{c.resolution}' for c in cands)}", file=sys.stderr)
        return [v for v, _, _ in measure_networks([(c.spec, c.resolution) for c in cands], target, work)]

    result = search(grid, measure, args.budget_ms, top=args.top, max_rounds=args.rounds)
    wall = time.perf_counter() - t0
    if args.plot is not None:
        from latency.plot import pareto

        pareto(result, table, args.plot)
    doc = {
        "budget_ms": args.budget_ms, "device": args.device, "format": args.format, "dtype": args.dtype,
        "family": args.family, "table": str(path), "threads": table.threads,
        "chosen": result.chosen.to_json() if result.chosen else None,
        "candidates": [c.to_json() for c in result.measured],
        "grid_size": len(result.grid), "rounds": result.rounds, "correction": result.correction,
        "within_10pct_below_budget": bool(result.chosen and result.chosen.measured_ms is not None
                                          and result.chosen.measured_ms >= 0.9 * args.budget_ms),
        "wall_s": round(wall, 1), "plot": str(args.plot) if args.plot else None,
    }
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        print(_text(doc))
    return 0 if result.chosen is not None else 1


def _text(doc: dict[str, Any]) -> str:
    c = doc["chosen"]
    head = f"budget {doc['budget_ms']:g} ms on {doc['device']} ({doc['format']} {doc['dtype']}, {doc['threads']}t)"
    if c is None:
        return f"{head}: no candidate measured under the budget ({len(doc['candidates'])} measured)"
    return (f"{head}: {c['name']} at {c['resolution']} px, {c['macs'] / 1e6:.1f} M MACs, {c['params'] / 1e6:.2f} M "
            f"params; predicted {c['predicted_ms']:.3f} ms, measured {c['measured_ms']:.3f} ms "
            f"({100 * c['measured_ms'] / doc['budget_ms']:.1f}% of the budget; {len(doc['candidates'])} measured, "
            f"{doc['grid_size']} predicted, {doc['wall_s']:.0f} s)")


__all__ = ["default_table_path", "register", "run_scale", "run_table"]
