"""Export one model to verified artifacts: convert, run in the runtime, compare, then write.

Nothing lands on disk before the artifact has been run in its own runtime and compared with its
PyTorch reference (:mod:`export.parity`). The artifact, its parity data (``{artifact}.parity.npz``:
the inputs and reference outputs ``verify`` re-checks) and its manifest are each written
atomically, manifest last: a failed or interrupted export never leaves a manifest that vouches for
a file it did not check.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_se.accounting import count
from edge_se.errors import EdgeSeError
from export import parity as par
from export.manifest import (
    FORMATS,
    SCHEMA,
    artifact_name,
    publish,
    sha256_bytes,
    versions,
    write_manifest,
)

RANDOM_PARITY_INPUTS = 4
"""Random N(0, 1) inputs in every parity check (seeded, so ``verify`` can be compared run to run)."""

REAL_PARITY_INPUTS = 4
"""Real images (from the calibration source, when it has real images) added to the parity inputs."""


class ParityFailure(EdgeSeError):
    """The artifact's outputs disagree with the reference beyond tolerance; ``record`` holds the figures."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


@dataclass
class Calibration:
    """Calibration images and where they came from.

    Attributes:
        source: ``random``, ``digits`` or a folder path (recorded in the manifest).
        batches: image batches ``[n, 3, R, R]``, normalised as the model expects.
        real: whether the images are real (real ones also join the parity inputs).
        held_out: real images not used for calibration, for the parity check ``[k, 3, R, R]``.
    """

    source: str
    batches: list[torch.Tensor]
    real: bool
    held_out: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportOptions:
    """Options shared by every artifact of one ``export`` call.

    Attributes:
        resolution: input side in pixels.
        check: run the parity check before writing (on by default; off writes ``passed: null``).
        channels_last: NHWC input for ``.tflite`` (ignored for ``.pte``: ExecuTorch takes NCHW).
        policy: quantisation policy names, passed to ``quantize_model``.
        engine: quantisation engine (``torchao`` or ``nncf``).
        seed: seed of the random parity inputs and of the quantiser.
        int8_rewrites: ``default`` (the target's set in :mod:`quantize.int8_ops`), ``none`` (the
            stock quantizer and partitioner alone) or rewrite names ``a,b``.
    """

    resolution: int
    check: bool = True
    channels_last: bool = False
    policy: tuple[str, ...] = ("ptq",)
    engine: str = "torchao"
    seed: int = 0
    int8_rewrites: str = "default"


def parity_inputs(resolution: int, calib: Calibration | None, *, seed: int) -> tuple[list[np.ndarray], list[bool]]:
    """NCHW float inputs ``[1, 3, R, R]`` for the parity check and, per input, whether it is a real image."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32) for _ in range(RANDOM_PARITY_INPUTS)]
    real = [False] * len(xs)
    if calib is not None and calib.real:
        pool = calib.held_out if calib.held_out is not None and len(calib.held_out) else torch.cat(calib.batches)
        for img in pool[:REAL_PARITY_INPUTS]:
            xs.append(img.unsqueeze(0).float().numpy().astype(np.float32))
            real.append(True)
    return xs, real


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


@torch.no_grad()
def _torch_outputs(module: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    outs = []
    for x in inputs:
        y = module(torch.from_numpy(x))
        y = y[0] if isinstance(y, (tuple, list)) else y
        outs.append(y.detach().float().numpy().copy())
    return outs


def graph_output_scale(gm: Any) -> float | None:
    """The quantisation step of a converted PT2E graph's output (its final dequantize), if any."""
    for node in getattr(getattr(gm, "graph", None), "nodes", []):
        if node.op == "output":
            first = node.args[0]
            first = first[0] if isinstance(first, (tuple, list)) else first
            name = str(getattr(first, "target", ""))
            if "dequantize_per_tensor" in name and len(first.args) > 1:
                scale = first.args[1]
                return float(scale) if isinstance(scale, (int, float)) else None
    return None


def _quantize(model: torch.nn.Module, fmt: str, example: tuple[torch.Tensor, ...], calib: Calibration | None,
              opts: ExportOptions) -> Any:
    try:
        from quantize import quantize_model
    except ImportError as exc:
        raise EdgeSeError(f"int8 export needs the quantize package (quantize_model): {exc}") from None
    if calib is None:
        raise EdgeSeError("int8 export needs calibration data: pass --calib digits|DIR|random")
    policy: str | list[str] = opts.policy[0] if len(opts.policy) == 1 else list(opts.policy)
    return quantize_model(model, example, calib.batches, target=fmt, policy=policy,  # type: ignore[arg-type]
                          engine=opts.engine, seed=opts.seed, calib_source=calib.source,  # type: ignore[arg-type]
                          rewrites=opts.int8_rewrites)


def _write_golden(path: Path, inputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
                  float_reference: Sequence[np.ndarray] | None, real: Sequence[bool]) -> bytes:
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {
        "inputs": np.stack(inputs),
        "reference": np.stack(reference),
        "real": np.asarray(real, dtype=bool),
    }
    if float_reference is not None:
        arrays["float_reference"] = np.stack(float_reference)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    publish(path, data)
    return data


def _log(msg: str) -> None:
    print(f"edge-se export: {msg}", file=sys.stderr, flush=True)


def export_one(
    model: torch.nn.Module,
    *,
    name: str,
    fmt: str,
    dtype: str,
    out_dir: str | os.PathLike[str],
    opts: ExportOptions,
    calib: Calibration | None = None,
    weights: dict[str, Any] | None = None,
    quantized: Any = None,
) -> dict[str, Any]:
    """Convert ``model`` to one artifact, check it in its runtime and write it with its manifest.

    Args:
        model: the float model in eval mode.
        name: model name for the file name and manifest.
        fmt: ``pte`` or ``tflite``.
        dtype: ``fp32`` or ``int8``.
        out_dir: folder to write into (created if missing).
        opts: shared options.
        calib: calibration data (required for int8; real images also join the parity inputs).
        weights: where the weights came from (recorded in the manifest).
        quantized: a ``QuantizedModel`` for this format, to reuse (int8 only; made when None).

    Returns:
        The result record (``path``, ``manifest``, ``format``, ``dtype``, ``size_bytes``, ``parity``, ...).

    Raises:
        ParityFailure: the check failed (nothing written); ``record`` holds the figures.
        EdgeSeError: a converter or runtime error, naming the step.
    """
    from export import pte as pte_mod
    from export import tflite as tfl_mod

    if fmt not in FORMATS:
        raise EdgeSeError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    res = opts.resolution
    layout = "NHWC" if (opts.channels_last and fmt == "tflite") else "NCHW"
    example = (torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(opts.seed)),)
    model = model.eval()
    t0 = time.perf_counter()
    q = None
    if dtype == "int8":
        q = quantized if quantized is not None else _quantize(model, fmt, example, calib, opts)
        reference_module: Any = q.graph
    else:
        reference_module = model
    t_quant = time.perf_counter() - t0

    delegation: dict[str, Any]
    rewrites: list[str] = []
    if fmt == "pte":
        int8_ops = q is not None and "int8-ops" in q.int8_rewrites
        data, delegation, rewrites = pte_mod.lower_pte(reference_module, example, int8_ops=int8_ops)
        for w in delegation["warnings"]:
            _log(f"warning: {name} {dtype}: {w}")
    else:
        data = tfl_mod.convert_tflite(reference_module, example, quantizer=q.quantizer if q else None,
                                      channels_last=layout == "NHWC")
    t_convert = time.perf_counter() - t0 - t_quant
    partitions = _partition_report(data, fmt, dtype)
    if fmt == "tflite":  # the same load of the model: ops and partitions come from the report
        delegation = tfl_mod.delegation_from_report(partitions)

    if fmt == "pte":
        ins, outs = pte_mod.pte_io(data)
        in_specs = [{"name": "x", **ins[0], "layout": layout, "scale": None, "zero_point": None}]
        out_specs = [{"name": f"output_{i}", **o, "scale": None, "zero_point": None} for i, o in enumerate(outs)]
    else:
        ins_t, outs_t = tfl_mod.tflite_io(data)
        in_specs = [{**ins_t[0], "layout": layout}]
        out_specs = list(outs_t)

    # Parity: run the artifact in its own runtime on the same inputs as the reference.
    xs, real = parity_inputs(res, calib, seed=opts.seed)
    reference = _torch_outputs(reference_module, xs)
    float_ref = _torch_outputs(model, xs) if dtype == "int8" else None
    runtime_inputs = [_to_layout(x, layout) for x in xs]
    figures: dict[str, Any]
    if opts.check:
        run = pte_mod.run_pte if fmt == "pte" else tfl_mod.run_tflite
        actual = run(data, runtime_inputs)
        if dtype == "fp32":
            figures = par.fp32_parity(actual, reference, real_images=real)
        else:
            scale: Any = out_specs[0]["scale"] if fmt == "tflite" else graph_output_scale(reference_module)
            assert float_ref is not None
            # A random-weight network's classes are near-ties on any image: top-1 says nothing there.
            trained = (weights or {}).get("source") == "file"
            figures = par.int8_parity(
                actual, reference, float_ref, output_scale=scale, real_images=real, gate_top1=trained
            )
    else:
        figures = {"passed": None, "skipped": True}
    t_check = time.perf_counter() - t0 - t_quant - t_convert

    fname = artifact_name(name, fmt, dtype)
    out = Path(out_dir)
    path = out / fname
    record: dict[str, Any] = {
        "path": str(path),
        "manifest": str(path) + ".json",
        "model": name,
        "format": fmt,
        "dtype": dtype,
        "resolution": res,
        "layout": layout,
        "size_bytes": len(data),
        "parity": figures,
        "export_s": round(t_quant + t_convert, 3),
        "check_s": round(t_check, 3),
    }
    if figures.get("passed") is False:
        raise ParityFailure(f"{fname}: parity check failed, nothing written ({_summary(figures)})", record)

    golden_name = fname + ".parity.npz"
    golden_info: dict[str, Any] | None = None
    if opts.check:  # unchecked artifacts get no parity data: `verify` then refuses them
        golden = _write_golden(out / golden_name, runtime_inputs, reference, float_ref, real)
        golden_info = {"file": golden_name, "sha256": sha256_bytes(golden)}
    publish(path, data)
    spec: Any = getattr(model, "spec", None)
    acc = count(spec, res) if spec is not None else None
    quant: dict[str, Any] | None = None
    if q is not None:
        quant = {
            "engine": q.engine,
            "quantizer": "xnnpack" if fmt == "pte" else "litert",
            "target": q.target,
            "policy": list(q.policy) if not isinstance(q.policy, str) else [q.policy],
            "se_blocks": _jsonable(q.se_blocks),
            "calibration": _jsonable(q.calibration),
            "rewrites": list(q.rewrites),
            "int8_rewrites": list(q.int8_rewrites),
            "input": {"scale": in_specs[0]["scale"], "zero_point": in_specs[0]["zero_point"]},
            "output": {"scale": out_specs[0]["scale"] if fmt == "tflite" else graph_output_scale(reference_module),
                       "zero_point": out_specs[0]["zero_point"]},
        }
    manifest = {
        "schema": SCHEMA,
        "artifact": fname,
        "format": fmt,
        "backend": FORMATS[fmt].backend,
        "dtype": dtype,
        "model": name,
        "variant": _variant(model),
        "resolution": res,
        "inputs": in_specs,
        "outputs": out_specs,
        "quantization": quant,
        "weights": weights or {"source": "unknown"},
        "calibration": None if calib is None else {"source": calib.source, "real": calib.real, **calib.info},
        "params": acc.params if acc else sum(p.numel() for p in model.parameters()),
        "macs": acc.macs if acc else None,
        "se_params": acc.se_params if acc else None,
        "se_macs": acc.se_macs if acc else None,
        "size_bytes": len(data),
        "sha256": sha256_bytes(data),
        "versions": versions(),
        "parity": {**figures, "golden": golden_info, "random_inputs": RANDOM_PARITY_INPUTS, "seed": opts.seed},
        "delegation": delegation,
        "partitions": partitions,
        "graph_rewrites": rewrites,
        "export_s": record["export_s"],
    }
    write_manifest(path, manifest)
    return record


def _partition_report(data: bytes, fmt: str, dtype: str) -> dict[str, Any]:
    """Partitions, operators outside the delegate and float operators in an int8 graph (:mod:`export.partitions`)."""
    from export.partitions import report_bytes

    try:
        return report_bytes(data, fmt, dtype)
    except (ValueError, OSError) as exc:  # a report is information: its failure must not cost the artifact
        _log(f"warning: partition report failed: {exc}")
        return {"error": str(exc)}


def _summary(figures: dict[str, Any]) -> str:
    if "vs_quantized" in figures:
        vq, vf = figures["vs_quantized"], figures["vs_float"]
        return (f"failed {', '.join(figures['failed_checks'])}; vs quantized: {vq['max_error_steps']:.2f} steps, "
                f"cosine {vq['cosine']:.4f}, SQNR {vq['sqnr_db']} dB; "
                f"vs float: cosine {vf['cosine']:.4f}, SQNR {vf['sqnr_db']} dB, top-1 {vf['top1_agreement']:.2f}")
    return (f"max abs error {figures.get('max_abs_error')}, relative {figures.get('max_rel_error')} "
            f"> rtol {figures.get('rtol')}")


def _variant(model: torch.nn.Module) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None:
        return {}
    se = getattr(spec, "se", None)
    return {
        "name": spec.name,
        "family": spec.family,
        "num_classes": spec.num_classes,
        "default_resolution": spec.resolution,
        "se": None if se is None else _jsonable(se),
    }


def _jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, tensors and other objects as JSON-ready values (repr as the last resort)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


__all__ = [
    "Calibration",
    "ExportOptions",
    "ParityFailure",
    "export_one",
    "graph_output_scale",
    "parity_inputs",
]
