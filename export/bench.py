"""Export benchmark: wall time and artifact size per model, format and dtype (``make bench-export``).

Runs the real export (with its parity check) for each model and appends one JSON line per
artifact to ``results/bench_export.jsonl``, then rewrites ``results/bench_export.md`` as a table
of every line in the file. Wall times are of this machine under its current load: compare rows
of one run, not across machines.

Usage: ``python -m export.bench [--models A,B] [--resolution R] [--dtype all] [--calib random]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.files import append_line, write_text
from contract.provenance import git_commit
from edge_se.tables import Column, table

DEFAULT_MODELS = ("mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0", "seresnet50")



def bench_model(
    model: str, *, resolution: int, dtypes: Sequence[str], calib: str, out_dir: Path
) -> list[dict[str, Any]]:
    """Export ``model`` in both formats and each dtype; one record per artifact (failures included)."""
    from export.pipeline import ExportOptions, ParityFailure, export_one
    from export.sources import load_calibration, prepare_model

    cal = load_calibration(calib, resolution, samples=32)
    model_obj, weights = prepare_model(model, weights=None, calib=cal, resolution=resolution)
    records = []
    for dtype in dtypes:
        for fmt in ("pte", "tflite"):
            t0 = time.perf_counter()
            error = None
            try:
                rec = export_one(model_obj, name=model, fmt=fmt, dtype=dtype, out_dir=out_dir,
                                 opts=ExportOptions(resolution=resolution), calib=cal, weights=weights)
            except ParityFailure as exc:
                rec, error = exc.record, str(exc)
            except Exception as exc:  # noqa: BLE001 - a bench row records the failure and goes on
                rec = {"size_bytes": None, "parity": {"passed": None}, "export_s": None}
                error = f"{type(exc).__name__}: {exc}"
            records.append({
                "model": model, "format": fmt, "dtype": dtype, "resolution": resolution, "calib": calib,
                "wall_s": round(time.perf_counter() - t0, 3), "convert_s": rec.get("export_s"),
                "size_bytes": rec.get("size_bytes"), "parity_passed": rec["parity"].get("passed"),
                "error": error,
            })
    return records


_COLUMNS = (
    Column("model", "model"), Column("format", "format"), Column("dtype", "dtype"),
    Column("res", "resolution", align="right"),
    Column("wall s", lambda r: str(r["wall_s"]), align="right"),
    Column("convert s", lambda r: str(r.get("convert_s") or "-"), align="right"),
    Column("size MB", lambda r: f"{r['size_bytes'] / 1e6:.2f}" if r.get("size_bytes") else "-", align="right"),
    Column("parity", lambda r: {True: "pass", False: "FAIL", None: "-"}[r.get("parity_passed")]),
    Column("commit", "commit"),
)


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the records (one row per artifact)."""
    return "# Export benchmark\n\n" + table(_COLUMNS, records) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export benchmark; return the exit code (1 if any export failed)."""
    p = argparse.ArgumentParser(prog="python -m export.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registry names")
    p.add_argument("--resolution", type=int, default=224, help="input side in pixels")
    p.add_argument("--dtype", choices=("fp32", "int8", "all"), default="all")
    p.add_argument("--calib", default="random", help="calibration source: random, digits or a folder")
    p.add_argument("--results", default="results", help="folder for bench_export.jsonl and .md")
    args = p.parse_args(argv)
    results = Path(args.results)
    jsonl = results / "bench_export.jsonl"
    dtypes = ["fp32", "int8"] if args.dtype == "all" else [args.dtype]
    commit = git_commit(short=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="edge_se_bench_export_") as tmp:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for rec in bench_model(model, resolution=args.resolution, dtypes=dtypes, calib=args.calib,
                                   out_dir=Path(tmp)):
                rec["commit"] = commit
                failed |= rec["error"] is not None
                append_line(jsonl, json.dumps(rec))
                print(json.dumps(rec), flush=True)
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    write_text(results / "bench_export.md", markdown(records))
    print(f"wrote {jsonl} and {results / 'bench_export.md'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
