"""16-bit activations on LiteRT: what int16 activations buy in fidelity where int8 activations fail, and their price.

    python scripts/int16_activations.py [--models SPEC,...] [--out results/int16_activations]

The error split (``results/error_split.md``) says the hard cases lose their fidelity on the
activations' grids. More bits there is the textbook remedy; XNNPACK has no int16 activations for
convolutions, so ``.pte`` cannot have it, but LiteRT has 16x8 kernels (int16 activations, int8
weights), and Google's AI Edge Quantizer (``ai_edge_quantizer``, installed with litert-torch)
writes them (recipe ``static_wi8_ai16``). For every model (``quantize.bench``'s specs and cached
weights; a missing one is trained as bench-quant trains it), four ``.tflite`` artifacts of the same
network at the bench's 64 px:

* ``fp32``: edge-se's fp32 export (litert-torch);
* ``edge-se int8``: plain PTQ as ``edge-se export --dtype int8 --policy ptq`` lowers it (64
  calibration images, the shipped int8 rewrites);
* ``aeq int8``: AI Edge Quantizer's ``static_wi8_ai8`` on the fp32 artifact, calibrated on the same
  64 images with min/max ranges (a second int8 recipe, to tell a recipe's loss from the grid's);
* ``aeq a16w8``: AI Edge Quantizer's ``static_wi8_ai16`` on the fp32 artifact, the same images.

Fidelity is measured on each artifact in LiteRT (the bench's 360 held-out images, logits against the
float PyTorch model, ``quantize.metrics.logits_report``). Latency: every artifact loaded through
the on-device runner's LiteRT session (``device_bench.runtimes.open_session``), one thread, timed
in alternating rounds in one process; the figure is the median over rounds of each round's median
run, and the ratios are per round (:func:`export.latency_probe.ratio_of_rounds`). One JSON line per
(model, recipe) in ``OUT.jsonl`` with the CPU; ``OUT.md`` is the table. A rerun skips models already
there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.files import append_line, write_text
from device_bench.sysinfo import system_line, system_record
from edge_se.data import load_images
from edge_se.tables import Column, table
from quantize.metrics import report_columns

MODELS = ("timm:mobilenetv3_large_100", "edge-se:mobilenetv3_small_100+builder-init", "external:timm/efficientnet_b0")
RECIPES = ("fp32", "edge-se int8", "aeq int8", "aeq a16w8")
ROUNDS, RUNS, WARMUP = 7, 10, 3


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


COLUMNS = [
    Column("model", "model"),
    Column("artifact", "recipe"),
    *report_columns(),
    Column("ms (1 thread)", "ms", ".3f", "right"),
    Column("vs edge-se int8", "vs_int8", ".2f", "right"),
    Column("vs fp32", "vs_fp32", ".2f", "right"),
    Column("operators (int16 / float)", "ops", align="right"),
]


def markdown(records: list[dict[str, Any]]) -> str:
    """The table of every line, the CPU of the first."""
    head = ["# 16-bit activations on LiteRT (`scripts/int16_activations.py`)", ""]
    if records:
        head += [system_line(records[0]["system"]), ""]
    return "\n".join(head) + "\n" + table(COLUMNS, records) + "\n"


def aeq_quantize(fp32: bytes, calib: torch.Tensor, *, activation_bits: int) -> bytes:
    """AI Edge Quantizer's static recipe (int8 weights, ``activation_bits`` 8 or 16) on the fp32 ``.tflite``.

    Ranges are the min and max over all of ``calib`` (``qsv_utils.min_max_update``), as edge-se's
    PT2E observers take them; AEQ's default, a 0.95 moving average over the images one by one,
    clips what the typical image does not reach (on timm's MobileNetV3-Large it left the int16
    logits a range of +-6.2 and the held-out logits at 7.5 dB).
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils

    q = quantizer.Quantizer(fp32)
    q.load_quantization_recipe(recipe.static_wi8_ai16() if activation_bits == 16 else recipe.static_wi8_ai8())
    (key, sig), = Interpreter(model_content=fp32).get_signature_list().items()
    (name,) = sig["inputs"]
    data = {key: [{name: calib[i : i + 1].numpy()} for i in range(calib.shape[0])]}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        cal = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
        cal.calibrate(data, q._recipe_manager)  # noqa: SLF001 - Quantizer.calibrate takes no update rule
        result = q.quantize(cal.get_model_qsvs())
    return bytes(result.quantized_model)


def _ops(data: bytes) -> str:
    """How many operators compute in int16 and how many in float (the rest int8)."""
    from export.partitions import read_tflite

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        ops, _ = read_tflite(f.name)
    int16 = sum(1 for o in ops if "int16" in o.input_dtypes[:1])
    flt = sum(1 for o in ops if o.input_dtypes[:1] == ("float32",) and o.name not in ("QUANTIZE", "DELEGATE"))
    return f"{len(ops)}: {int16} / {flt}"


def _latency(artifacts: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """Each artifact's median-of-round-medians (ms) and its per-round ratios to edge-se int8 and fp32."""
    from export.backends import get
    from export.latency_probe import open_timed_session, ratio_of_rounds, round_ms

    with tempfile.TemporaryDirectory(prefix="edge-se-int16-") as tmp:
        sessions = {name: open_timed_session(get("tflite"), data, Path(tmp) / str(i), layout="NCHW", threads=1,
                                             warmup=WARMUP)
                    for i, (name, data) in enumerate(artifacts.items())}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        order = list(sessions)
        for r in range(ROUNDS):
            for name in order if r % 2 == 0 else order[::-1]:
                times[name].append(round_ms(sessions[name], RUNS))
    return {name: {"ms": round(statistics.median(t), 4),
                   "vs_int8": round(ratio_of_rounds(times["edge-se int8"], t), 3),
                   "vs_fp32": round(ratio_of_rounds(times["fp32"], t), 3)} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Build, measure and time the four artifacts of every model not yet in ``--out``."""
    from export.backends import get
    from export.backends.tflite import run_tflite
    from quantize.bench import CALIB_SIZE, RESOLUTION, _data_of, load_bench_model
    from quantize.core import quantize_model
    from quantize.metrics import logits_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default="results/int16_activations")
    p.add_argument("--weights-dir", default="results/weights")
    args = p.parse_args(argv)
    out = Path(args.out)
    lines = out.with_suffix(".jsonl")
    records = [json.loads(x) for x in lines.read_text().splitlines() if x.strip()] if lines.exists() else []
    done = {r["model"] for r in records}
    torch.set_num_threads(1)
    system = system_record()
    backend = get("tflite")
    for spec in args.models.split(","):
        if spec in done:
            continue
        data = _data_of(spec.partition(":")[2])[1]
        calib = load_images(data, RESOLUTION, split="train").images[:CALIB_SIZE].float()
        held = load_images(data, RESOLUTION, split="test")
        model, weights = load_bench_model(spec, Path(args.weights_dir))
        model.eval()
        example = (calib[:1],)
        with torch.no_grad():
            ref = torch.cat([model(held.images[i : i + 60].float()) for i in range(0, len(held.images), 60)])
        _log(f"int16 activations: {spec}: building")
        t0 = time.perf_counter()
        fp32 = bytes(backend.lower(model, example, quantized=None, layout="NCHW").data)
        qm = quantize_model(model, example, [calib], target="tflite", seed=0, policy="ptq",  # type: ignore[arg-type]
                            calib_size=CALIB_SIZE, calib_source=data)
        artifacts = {"fp32": fp32,
                     "edge-se int8": bytes(backend.lower(qm.graph, example, quantized=qm, layout="NCHW").data),
                     "aeq int8": aeq_quantize(fp32, calib, activation_bits=8),
                     "aeq a16w8": aeq_quantize(fp32, calib, activation_bits=16)}
        built_s = time.perf_counter() - t0
        _log(f"  built in {built_s:.0f} s; measuring")
        timing = _latency(artifacts)
        for recipe, art in artifacts.items():
            test = torch.from_numpy(np.concatenate(run_tflite(art, [x[None].float().numpy() for x in held.images])))
            record = {"model": spec, "recipe": recipe, "resolution": RESOLUTION, "calibration_images": CALIB_SIZE,
                      **logits_report(ref, test, held.labels), **timing[recipe], "ops": _ops(art),
                      "bytes": len(art), "build_s": round(built_s, 1), **weights, "system": system}
            append_line(lines, json.dumps(record))
            records.append(record)
            _log(f"  {recipe}: {record['sqnr_db']:.1f} dB, agree {record['top1_agreement']:.4f}, "
                 f"{record['ms']:.3f} ms ({record['vs_int8']:.2f}x edge-se int8)")
        write_text(out.with_suffix(".md"), markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
