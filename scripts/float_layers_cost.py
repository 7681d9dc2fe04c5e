"""Mixed precision's price: what ``--policy float-sensitive`` buys in fidelity per K, and what it costs in latency.

    python scripts/float_layers_cost.py [--models SPEC,...] [--targets pte,tflite] [--k 1,4,16]
                                        [--out results/float_layers_cost]

For every model (``quantize.bench``'s specs and cached weights; a missing one is trained as
bench-quant trains it) and target: plain int8 (``ptq``) and ``float-sensitive`` with each K,
quantised as ``edge-se export`` quantises (64 calibration images of the digits, the shipped int8
rewrites), with
* fidelity on the 360 held-out images against the float model (:func:`quantize.evaluate.evaluate`),
* latency of the K artifact over plain int8's (:class:`export.latency_probe.ArtifactLatencyProbe`: both
  lowered by the format's own converter, loaded in its runtime through the on-device runner's
  sessions, one thread, alternating rounds, at the bench's 64 px).
One JSON line per (model, target, policy) in ``OUT.jsonl``, the CPU recorded in each; ``OUT.md`` is
the table. A rerun skips lines already there (resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from contract.files import append_line, write_text
from device_bench.sysinfo import system_line, system_record
from edge_se.data import load_images
from edge_se.tables import Column, table
from quantize.metrics import report_columns

HARD = ("edge-se:efficientnet_b0+builder-init", "external:timm/efficientnet_b0", "external:torchvision/efficientnet_b0",
        "external:timm/mobilenetv3_small_100", "edge-se:mobilenetv3_small_100+builder-init",
        "timm:mobilenetv3_large_100", "edge-se:efficientnet_b0@textures", "edge-se:mobilenetv3_small_100@textures")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COLUMNS = [
    Column("model", "model"),
    Column("target", "target"),
    Column("policy", lambda r: "ptq" if r.get("k") is None else f"float-sensitive K={r['k']}"),
    Column("fp32 operators", lambda r: len((r.get("float_layers") or {}).get("fp32_nodes") or []), "d", "right"),
    *report_columns(),
    Column("gate SQNR min dB", "gate_sqnr_db_min", ".1f", "right"),
    Column("latency vs ptq", "latency_ratio", ".3f", "right"),
    Column("ptq / K ms (1 thread)", lambda r: "" if r.get("plain_ms") is None
           else f"{r['plain_ms']:.3f} / {r['candidate_ms']:.3f}", align="right"),
]


def markdown(records: list[dict[str, Any]]) -> str:
    """The table of every line, the CPU of the first."""
    head = ["# Mixed precision: `--policy float-sensitive` per K (`scripts/float_layers_cost.py`)", ""]
    if records:
        head += [system_line(records[0]["system"]), ""]
    return "\n".join(head) + "\n" + table(COLUMNS, records) + "\n"


def _quantize(model: torch.nn.Module, calib: torch.Tensor, target: str, data: str, k: int | None) -> Any:
    """Plain int8 (``k`` None) or ``float-sensitive`` with ``k`` tensors fp32, as bench-quant quantises."""
    from quantize.bench import CALIB_SIZE
    from quantize.core import quantize_model

    return quantize_model(model, (calib[:1],), [calib], target=target, seed=0,  # type: ignore[arg-type]
                          policy="ptq" if k is None else "float-sensitive", float_layers=k,
                          calib_size=CALIB_SIZE, calib_source=data)


def main(argv: list[str] | None = None) -> int:
    """Measure every (model, target, K) not yet in ``--out``."""
    from export import backends
    from export.latency_probe import ArtifactLatencyProbe
    from quantize.bench import RESOLUTION, _data_of, load_bench_model
    from quantize.evaluate import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(HARD))
    p.add_argument("--targets", default="pte,tflite")
    p.add_argument("--k", default="1,4,16", help="tensors kept fp32, comma-separated")
    p.add_argument("--out", default="results/float_layers_cost")
    p.add_argument("--weights-dir", default="results/weights")
    args = p.parse_args(argv)
    out = Path(args.out)
    lines = out.with_suffix(".jsonl")
    records = [json.loads(x) for x in lines.read_text().splitlines() if x.strip()] if lines.exists() else []
    done = {(r["model"], r["target"], r.get("k")) for r in records}
    torch.set_num_threads(1)
    system = system_record()
    ks = [int(k) for k in args.k.split(",")]
    for spec in args.models.split(","):
        data = _data_of(spec.partition(":")[2])[1]
        calib = load_images(data, RESOLUTION, split="train").images
        held = load_images(data, RESOLUTION, split="test")
        model, weights = load_bench_model(spec, Path(args.weights_dir))
        for target in args.targets.split(","):
            if all((spec, target, k) in done for k in [None, *ks]):
                continue
            backend = backends.get(target)
            probe = ArtifactLatencyProbe(backend, (calib[:1],), backend.layout(False))

            plain = _quantize(model, calib, target, data, None)
            for k in [None, *ks]:
                if (spec, target, k) in done:
                    continue
                _log(f"float-layers cost: {spec} {target} K={k}")
                t0 = time.perf_counter()
                qm = plain if k is None else _quantize(model, calib, target, data, k)
                record: dict[str, Any] = {"model": spec, "target": target, "k": k, "resolution": RESOLUTION,
                                          "policy": list(qm.policy), "float_layers": qm.float_layers, **weights}
                figures = evaluate(qm, held.images, held.labels)
                figures.pop("gate_error", None)
                record.update(figures)
                if k is not None:
                    record["latency_ratio"] = round(probe(plain, qm), 4)
                    record.update(probe.last)
                record["seconds"] = round(time.perf_counter() - t0, 1)
                record["system"] = system
                append_line(lines, json.dumps(record))
                records.append(record)
                write_text(out.with_suffix(".md"), markdown(records))
                _log(f"  -> {record['sqnr_db']:.1f} dB, agree {record['top1_agreement']:.4f}, "
                     f"latency {record.get('latency_ratio')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
