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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.files import publish, sha256_bytes
from contract.formats import artifact_name
from contract.manifest import SCHEMA, write_manifest
from edge_se.accounting import count
from edge_se.errors import EdgeSeError
from export import backends, fidelity
from export import parity as par
from export.backends.base import Backend, Lowered, graph_output_scale
from export.versions import versions
from quantize.calibration import Calibration

RANDOM_PARITY_INPUTS = 4
"""Random N(0, 1) inputs in every parity check (seeded, so ``verify`` can be compared run to run)."""

REAL_PARITY_INPUTS = 4
"""Real images (from the calibration source, when it has real images) added to the parity inputs."""


class ParityFailure(EdgeSeError):
    """The artifact's outputs disagree with the reference beyond tolerance; ``record`` holds the figures."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class ExportOptions:
    """Options shared by every artifact of one ``export`` call.

    Attributes:
        resolution: input side in pixels.
        input_channels: channels of the input ``[1, C, R, R]``: 3 for an image; a latency probe of one
            block (:mod:`pipeline.latency_table`) takes that block's input feature map.
        check: run the parity check before writing (on by default; off writes ``passed: null``).
        channels_last: NHWC input for ``.tflite`` (ignored for ``.pte``: ExecuTorch takes NCHW).
        policy: quantisation policy names, passed to ``quantize_model``.
        engine: quantisation engine (``torchao`` or ``nncf``).
        seed: seed of the random parity inputs and of the quantiser.
        int8_rewrites: ``default`` (the target's set in :mod:`quantize.int8_ops`), ``none`` (the
            stock quantizer and partitioner alone) or rewrite names ``a,b``.
        gate_outputs: append every SE block's gate vector to the outputs, after the logits
            (:mod:`export.gate_outputs`; manifest ``gate_outputs``).
        gate_stats: a gate-stats dict (:mod:`device_bench.gate_score`) recorded in the manifest's
            ``gate_outputs.stats`` so the on-device runner can score; checked against the blocks.
        gate_stats_file: where ``gate_stats`` came from (named in errors).
        gate_layout: ``concat`` (one output holding every gate; the default), ``separate`` (one
            output per SE block) or ``quantized`` (one per block, int8 in an int8 artifact);
            :data:`export.gate_outputs.LAYOUTS`.
        gate_fit: a data source of :func:`edge_se.data.load_images` (``digits``, ``textures``, a
            folder): fit the gate statistics on *this artifact's* gate outputs, run in its own
            runtime over that source's training split (:func:`device_bench.gate_fit.fit`), and record
            them in ``gate_outputs.stats``; the int8 artifact's rounding is then in the statistics
            the device scores with. Excludes ``gate_stats``.
        int8_float_gate: an int8 artifact must also be faithful to the float model to be written
            (:func:`export.parity.int8_parity`'s ``gate_float``); False only for latency probes of
            random weights, which must still match their quantised graph.
        float_prefix: the network's first N execution units stay fp32 in an int8 artifact
            (:mod:`quantize.float_prefix`; manifest ``quantization.float_prefix``); 0: none.
        float_layers: with policy ``float-sensitive``, the int8 tensors kept fp32
            (:mod:`quantize.mixed_precision`; manifest ``quantization.float_layers``); None: the default.
        latency_budget_pct: with policy ``auto``: an fp32 island is kept only if the artifact with it
            runs within this many percent of plain int8's, timed side by side
            (:mod:`export.latency_probe`); None: ``quantize.core.AUTO_LATENCY_BUDGET_PCT``.
    """

    resolution: int
    input_channels: int = 3
    check: bool = True
    channels_last: bool = False
    policy: tuple[str, ...] = ("ptq",)
    engine: str = "torchao"
    seed: int = 0
    int8_rewrites: str = "default"
    gate_outputs: bool = False
    gate_stats: Mapping[str, Any] | None = None
    gate_stats_file: str | None = None
    gate_layout: str = "concat"
    gate_fit: str | None = None
    int8_float_gate: bool = True
    float_prefix: int = 0
    float_layers: int | None = None
    latency_budget_pct: float | None = None


def parity_inputs(resolution: int, calib: Calibration | None, *, seed: int,
                  channels: int = 3) -> tuple[list[np.ndarray], list[bool]]:
    """NCHW float inputs ``[1, C, R, R]`` for the parity check and, per input, whether it is a real image."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((1, channels, resolution, resolution)).astype(np.float32)
          for _ in range(RANDOM_PARITY_INPUTS)]
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
def _torch_outputs_all(module: Any, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Every output of ``module`` per input (float32 numpy; an integer output keeps its dtype), in output order."""
    outs = []
    for x in inputs:
        y = module(torch.from_numpy(x))
        ys = y if isinstance(y, (tuple, list)) else (y,)
        # An int8 gate output (--gate-layout quantized) stays int8: readers dequantise it by its scale.
        outs.append([(t.detach().float() if t.dtype.is_floating_point else t.detach()).numpy().copy() for t in ys])
    return outs


def _torch_outputs(module: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Output 0 (the logits) of ``module`` per input."""
    return [ys[0] for ys in _torch_outputs_all(module, inputs)]


def _quantize(model: torch.nn.Module, fmt: str, example: tuple[torch.Tensor, ...], calib: Calibration | None,
              opts: ExportOptions) -> Any:
    try:
        from quantize import quantize_model
    except ImportError as exc:
        raise EdgeSeError(f"int8 export needs the quantize package (quantize_model): {exc}") from None
    if calib is None:
        raise EdgeSeError("int8 export needs calibration data: pass --calib digits|DIR|random")
    policy: str | list[str] = opts.policy[0] if len(opts.policy) == 1 else list(opts.policy)
    probe = None
    if "auto" in opts.policy:  # auto's fp32 islands are kept only within a measured latency budget
        from export.latency_probe import ArtifactLatencyProbe

        backend = backends.get(fmt)
        probe = ArtifactLatencyProbe(backend, example, backend.layout(opts.channels_last))
    return quantize_model(model, example, calib.batches, target=fmt, policy=policy,  # type: ignore[arg-type]
                          engine=opts.engine, seed=opts.seed, calib_source=calib.source,  # type: ignore[arg-type]
                          calib_size=calib.size, rewrites=opts.int8_rewrites, float_prefix=opts.float_prefix,
                          float_layers=opts.float_layers, latency_probe=probe,
                          latency_budget_pct=opts.latency_budget_pct)


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


@dataclass
class _Program:
    """What gets lowered: the float model, or its quantised PT2E graph (``quantized``) for int8."""

    model: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    layout: str
    quantized: Any = None
    gate_blocks: list[Any] | None = None
    gated: Any = None
    float_gated: Any = None
    gate_stats: Mapping[str, Any] | None = None

    @property
    def reference(self) -> Any:
        """The PyTorch module the artifact must agree with (and that is lowered).

        The quantised graph (int8) or the model; with ``--gate-outputs``, that graph with the SE
        gates appended to its outputs (:func:`export.gate_outputs.with_gate_outputs`).
        """
        if self.gated is not None:
            return self.gated
        return self.quantized.graph if self.quantized is not None else self.model


@dataclass
class _Described:
    """The artifact as its own runtime and reader see it (the manifest's I/O and delegation blocks)."""

    partitions: dict[str, Any]
    delegation: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


@dataclass
class _Checked:
    """The parity inputs (in the artifact's layout), the references and the figures of the check."""

    inputs: list[np.ndarray]
    reference: list[np.ndarray]
    float_reference: list[np.ndarray] | None
    real: list[bool]
    figures: dict[str, Any]


def _prepare(model: torch.nn.Module, backend: Backend, *, dtype: str, opts: ExportOptions,
             calib: Calibration | None, quantized: Any) -> _Program:
    """The seeded example input and, for int8, the quantised graph (``quantized`` reused when given)."""
    res = opts.resolution
    example = (torch.randn(1, opts.input_channels, res, res, generator=torch.Generator().manual_seed(opts.seed)),)
    program = _Program(model.eval(), example, backend.layout(opts.channels_last))
    if dtype == "int8":
        program.quantized = quantized if quantized is not None else _quantize(
            program.model, backend.name, example, calib, opts)
    if opts.gate_outputs:
        _add_gate_outputs(program, opts, quantized_outputs=not backend.quantizes_outputs)
    return program


def _add_gate_outputs(program: _Program, opts: ExportOptions, *, quantized_outputs: bool) -> None:
    """Append the SE gates to the outputs of the graph to lower, after quantisation (same quantiser decisions)."""
    from export import gate_outputs as go

    name = getattr(getattr(program.model, "spec", None), "name", type(program.model).__name__)
    if program.quantized is not None:
        float_graph = program.quantized.reference
        blocks = list(program.quantized.se_blocks) or go.se_blocks(float_graph, model_name=name)
        base = program.quantized.graph
    else:
        float_graph = torch.export.export(program.model, program.example).module()
        blocks = go.se_blocks(float_graph, model_name=name)
        base = float_graph
    if opts.gate_stats is not None:
        go.check_stats(opts.gate_stats, blocks, where=opts.gate_stats_file or "(stats dict)")
    program.gate_blocks = blocks
    program.gate_stats = opts.gate_stats
    program.gated = go.with_gate_outputs(base, blocks, layout=opts.gate_layout, quantized_outputs=quantized_outputs)
    grids = go.gate_grids(go.gate_nodes(program.gated))  # None: a gate in float
    if quantized_outputs and opts.gate_layout == "concat" and grids is not None and len(grids) > 1:
        _log(f"note: the {len(blocks)} gates have their own int8 grids, so output 1 is a float cat of "
             f"{len(blocks)} dequantised gates; --policy gate-fixed puts them on one grid and packs them into one "
             "int8 output (cheaper: docs/export.md)")
    program.float_gated = (go.with_gate_outputs(float_graph, blocks, layout=opts.gate_layout)
                           if program.quantized is not None else None)


def _lower(backend: Backend, program: _Program, *, label: str) -> Lowered:
    """The artifact's bytes from the backend's converter; its warnings logged."""
    lowered = backend.lower(program.reference, program.example, quantized=program.quantized, layout=program.layout)
    for w in lowered.warnings:
        _log(f"warning: {label}: {w}")
    return lowered


def _describe(backend: Backend, lowered: Lowered, *, dtype: str, layout: str) -> _Described:
    """Partition report, delegation block and tensor specs, read back from the bytes."""
    partitions = _partition_report(backend, lowered.data, dtype)
    delegation = backend.delegation(lowered, partitions)
    inputs, outputs = backend.tensor_specs(lowered.data, layout=layout)
    return _Described(partitions, delegation, inputs, outputs)


def _gate_output_quant(program: _Program, described: _Described, opts: ExportOptions) -> None:
    """Give the int8 gate outputs of a ``.pte`` (``quantized``; ``concat`` on one grid) their scale and zero point."""
    if program.gate_blocks is None:
        return
    from export.gate_outputs import gate_quant

    for i, (scale, zero) in gate_quant(program.gated).items():
        out = described.outputs[i]
        if out["scale"] is None and str(out["dtype"]) in ("int8", "uint8"):
            out["scale"], out["zero_point"] = scale, zero


def _output_quant(described: _Described) -> list[tuple[float | None, int | None]]:
    """Per output, ``(scale, zero point)`` as the manifest gives them (gate readers dequantise int8 with them)."""
    return [(o["scale"], o["zero_point"]) for o in described.outputs]


def _check(backend: Backend, data: bytes, program: _Program, described: _Described, *, dtype: str,
           opts: ExportOptions, calib: Calibration | None, weights: dict[str, Any] | None) -> _Checked:
    """Run the artifact in its own runtime on the parity inputs and compare with the references."""
    xs, real = parity_inputs(opts.resolution, calib, seed=opts.seed, channels=opts.input_channels)
    reference_all = _torch_outputs_all(program.reference, xs)  # with --gate-outputs: logits, then the gates
    reference = [ys[0] for ys in reference_all]
    float_ref = _torch_outputs(program.model, xs) if dtype == "int8" else None
    runtime_inputs = [_to_layout(x, program.layout) for x in xs]
    figures: dict[str, Any]
    gated = program.gate_blocks is not None
    runs = backend.run_all(data, runtime_inputs) if gated and opts.check else None
    if not opts.check:
        figures = {"passed": None, "skipped": True}
    elif dtype == "fp32":
        actual = [r[0] for r in runs] if runs is not None else backend.run(data, runtime_inputs)
        figures = par.fp32_parity(actual, reference, real_images=real)
    else:
        actual = [r[0] for r in runs] if runs is not None else backend.run(data, runtime_inputs)
        assert float_ref is not None
        # A random-weight network's classes are near-ties on any image: top-1 says nothing there.
        trained = (weights or {}).get("source") == "file"
        figures = par.int8_parity(
            actual, reference, float_ref, output_scale=backend.output_scale(described.outputs, program.reference),
            real_images=real, gate_top1=trained, gate_float=opts.int8_float_gate,
        )
    if runs is not None:
        figures["gate_outputs"] = _gate_figures(program, described, runs, reference_all, xs, dtype=dtype,
                                                   opts=opts)
        figures["passed"] = bool(figures["passed"]) and figures["gate_outputs"]["passed"]
        if not figures["gate_outputs"]["passed"]:
            figures.setdefault("failed_checks", []).append("gate_outputs")
    return _Checked(runtime_inputs, reference, float_ref, real, figures)


def _gate_figures(program: _Program, described: _Described, runs: list[list[np.ndarray]],
                  ref: list[list[np.ndarray]], xs: Sequence[np.ndarray], *, dtype: str,
                  opts: ExportOptions) -> dict[str, Any]:
    """The runtime's gates (read by the manifest's slots) against ``ref`` (the lowered graph's) and the float's."""
    from device_bench.gate_score import gate_arrays
    from export import gate_outputs as go

    blocks = program.gate_blocks or []
    slots = go.gate_slots(blocks, layout=opts.gate_layout)

    quant = _output_quant(described)

    def per_block(outs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        split = [gate_arrays(r, slots, quant=quant) for r in outs]
        return [[s[b.name] for s in split] for b in blocks]

    flt = _torch_outputs_all(program.float_gated, xs) if program.float_gated is not None else None
    scales = (go.gate_scales(program.gated, blocks, described.outputs, layout=opts.gate_layout) if dtype == "int8"
              else [None] * len(blocks))
    return par.gate_parity(
        per_block(runs), per_block(ref), None if flt is None else per_block(flt),
        names=[b.name for b in blocks], scales=scales, dtype=dtype,
    )


def _quantization(backend: Backend, program: _Program, described: _Described) -> dict[str, Any] | None:
    """The manifest's ``quantization`` block (``None`` for fp32)."""
    q = program.quantized
    if q is None:
        return None
    ins, outs = described.inputs, described.outputs
    return {
        "engine": q.engine,
        "quantizer": backend.spec.backend,
        "target": q.target,
        "policy": list(q.policy) if not isinstance(q.policy, str) else [q.policy],
        "se_blocks": _jsonable(q.se_blocks),
        "calibration": _jsonable(q.calibration),
        "rewrites": list(q.rewrites),
        "int8_rewrites": list(q.int8_rewrites),
        "float_prefix": _jsonable(q.float_prefix),
        "float_layers": _jsonable(q.float_layers),
        "equalization": _jsonable(getattr(q.quantizer, "edge_se_equalized", None)),
        "adaround": _jsonable(q.adaround),
        "qat": _jsonable(q.qat),
        "latency_budget_pct": q.latency_budget_pct,
        # `auto`: every recipe and SE-block set it measured, the chosen one marked (quantize.core._auto).
        "auto_steps": _jsonable(q.steps),
        "input": {"scale": ins[0]["scale"], "zero_point": ins[0]["zero_point"]},
        "output": {"scale": backend.output_scale(outs, program.reference), "zero_point": outs[0]["zero_point"]},
    }


def _manifest(backend: Backend, program: _Program, lowered: Lowered, described: _Described, checked: _Checked, *,
              record: dict[str, Any], golden: dict[str, Any] | None, opts: ExportOptions,
              calib: Calibration | None, weights: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest (docs/manifest.md) of a checked artifact."""
    model, res, data = program.model, opts.resolution, lowered.data
    spec: Any = getattr(model, "spec", None)
    acc = count(spec, res) if spec is not None else None
    return {
        "schema": SCHEMA,
        "artifact": Path(record["path"]).name,
        "format": backend.name,
        "backend": backend.spec.backend,
        "dtype": record["dtype"],
        "model": record["model"],
        "variant": _variant(model),
        "resolution": res,
        "inputs": described.inputs,
        "outputs": described.outputs,
        "quantization": _quantization(backend, program, described),
        "weights": weights or {"source": "unknown"},
        "calibration": _calibration(program, calib),
        "params": acc.params if acc else sum(p.numel() for p in model.parameters()),
        "macs": acc.macs if acc else None,
        "se_params": acc.se_params if acc else None,
        "se_macs": acc.se_macs if acc else None,
        "size_bytes": len(data),
        "sha256": sha256_bytes(data),
        "versions": versions(),
        "parity": {**checked.figures, "golden": golden, "random_inputs": RANDOM_PARITY_INPUTS, "seed": opts.seed},
        "delegation": described.delegation,
        "partitions": described.partitions,
        "graph_rewrites": lowered.rewrites,
        "export_s": record["export_s"],
        **_gate_block(program, opts),
    }


def _gate_block(program: _Program, opts: ExportOptions) -> dict[str, Any]:
    """``{"gate_outputs": ...}`` for a gated artifact, else nothing (older readers see no new key)."""
    if program.gate_blocks is None:
        return {}
    from export.gate_outputs import manifest_block

    return {"gate_outputs": manifest_block(program.gate_blocks, program.gate_stats, layout=opts.gate_layout)}


def _fit_gate_stats(backend: Backend, data: bytes, program: _Program, described: _Described, opts: ExportOptions,
                    *, dtype: str) -> dict[str, Any]:
    """Gate statistics fitted on the artifact's own gate outputs over ``opts.gate_fit``'s training split.

    Each training image runs through the artifact in its own runtime (one inference each, in the
    artifact's layout); the gates are read by the manifest's slots, so the statistics describe
    exactly the values the on-device runner will score.
    """
    from device_bench.gate_fit import fit
    from device_bench.gate_score import stacked_gate_arrays
    from edge_se.data import load_images
    from export import gate_outputs as go

    assert opts.gate_fit is not None and program.gate_blocks is not None
    images = load_images(opts.gate_fit, opts.resolution, split="train", seed=opts.seed).images
    xs = [_to_layout(images[i : i + 1].numpy().astype(np.float32), program.layout) for i in range(len(images))]
    slots = go.gate_slots(program.gate_blocks, layout=opts.gate_layout)
    gates = stacked_gate_arrays(backend.run_all(data, xs), slots,  # in forward order, as the slots
                                quant=_output_quant(described))
    try:
        return fit(gates, seed=opts.seed,
                   source=f"{opts.gate_fit}/train: this artifact's gate outputs ({backend.name} {dtype}, its runtime)")
    except ValueError as exc:
        raise EdgeSeError(f"--gate-fit {opts.gate_fit}: {exc}") from None


def _calibration(program: _Program, calib: Calibration | None) -> dict[str, Any] | None:
    """The manifest's ``calibration``: for int8 the images actually used (policy, size, selection, indices)."""
    if calib is None:
        return None
    block = {"source": calib.source, "real": calib.real, **calib.info}
    if program.quantized is not None:
        block |= _jsonable(program.quantized.calibration)
    return block


def _publish(path: Path, data: bytes, checked: _Checked, *, opts: ExportOptions) -> dict[str, Any] | None:
    """Write the parity data (checked artifacts only: ``verify`` refuses the others), then the artifact.

    Returns:
        The manifest's ``parity.golden`` block, or ``None`` without a check.
    """
    golden_info: dict[str, Any] | None = None
    if opts.check:
        golden_name = path.name + ".parity.npz"
        golden = _write_golden(path.with_name(golden_name), checked.inputs, checked.reference,
                               checked.float_reference, checked.real)
        golden_info = {"file": golden_name, "sha256": sha256_bytes(golden)}
    publish(path, data)
    return golden_info


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

    Prepare (and quantise, for int8) -> lower through the format's backend
    (:mod:`export.backends`) -> read the artifact back and run it in its own runtime -> write the
    parity data, the artifact, then the manifest, each atomically.

    Args:
        model: the float model in eval mode.
        name: model name for the file name and manifest.
        fmt: a format of :func:`export.backends.names` (``pte`` or ``tflite``).
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
    backend = backends.get(fmt)
    fname = artifact_name(name, fmt, dtype)
    t0 = time.perf_counter()
    program = _prepare(model, backend, dtype=dtype, opts=opts, calib=calib, quantized=quantized)
    t_quant = time.perf_counter() - t0
    lowered = _lower(backend, program, label=f"{name} {dtype}")
    t_convert = time.perf_counter() - t0 - t_quant
    described = _describe(backend, lowered, dtype=dtype, layout=program.layout)
    _gate_output_quant(program, described, opts)
    checked = _check(backend, lowered.data, program, described, dtype=dtype, opts=opts, calib=calib,
                     weights=weights)
    t_check = time.perf_counter() - t0 - t_quant - t_convert

    path = Path(out_dir) / fname
    record: dict[str, Any] = {
        "path": str(path),
        "manifest": str(path) + ".json",
        "model": name,
        "format": fmt,
        "dtype": dtype,
        "resolution": opts.resolution,
        "layout": program.layout,
        "size_bytes": len(lowered.data),
        "parity": checked.figures,
        "export_s": round(t_quant + t_convert, 3),
        "check_s": round(t_check, 3),
    }
    if checked.figures.get("passed") is False:
        raise ParityFailure(f"{fname}: parity check failed, nothing written ({_summary(checked.figures)})", record)
    measured = fidelity.measure(lambda xs: backend.run(lowered.data, xs), model=program.model,
                                quantized=program.quantized, calib=calib, layout=program.layout)
    if opts.gate_fit is not None and program.gate_blocks is not None:
        program.gate_stats = _fit_gate_stats(backend, lowered.data, program, described, opts, dtype=dtype)
    golden = _publish(path, lowered.data, checked, opts=opts)
    manifest = _manifest(backend, program, lowered, described, checked, record=record, golden=golden,
                         opts=opts, calib=calib, weights=weights)
    if measured is not None:
        block, npz = measured
        npz_name = path.name + ".fidelity.npz"
        publish(path.with_name(npz_name), npz)
        manifest["fidelity"] = record["fidelity"] = block | {"file": npz_name, "sha256": sha256_bytes(npz)}
    write_manifest(path, manifest)
    return record


def _partition_report(backend: Backend, data: bytes, dtype: str) -> dict[str, Any]:
    """Partitions, operators outside the delegate and float operators in an int8 graph (:mod:`export.partitions`)."""
    try:
        return backend.partitions(data, dtype)
    except (ValueError, OSError) as exc:  # a report is information: its failure must not cost the artifact
        _log(f"warning: partition report failed: {exc}")
        return {"error": str(exc)}


def _summary(figures: dict[str, Any]) -> str:
    if "vs_quantized" in figures:
        vq, vf = figures["vs_quantized"], figures["vs_float"]
        gates = ""
        if "gate_outputs" in figures.get("failed_checks", []):  # the int8 gate check: its worst block
            g = figures["gate_outputs"]
            worst = min(g["blocks"], key=lambda b: float(b.get("sqnr_db") or 0.0))
            gates = (f"; gates: SE block {worst['block']} {worst.get('max_error_steps', 0.0):.1f} steps > "
                     f"{g['max_steps']:g} and SQNR {worst.get('sqnr_db', 0.0):.1f} dB < {g['min_sqnr_db']:g}")
        return (f"failed {', '.join(figures['failed_checks'])}; vs quantized: {vq['max_error_steps']:.2f} steps, "
                f"cosine {vq['cosine']:.4f}, SQNR {vq['sqnr_db']} dB; "
                f"vs float: cosine {vf['cosine']:.4f}, SQNR {vf['sqnr_db']} dB, top-1 {vf['top1_agreement']:.2f}"
                + gates)
    if "gate_outputs" in figures.get("failed_checks", []):
        g = figures["gate_outputs"]
        worst = max(g["blocks"], key=lambda b: float(b["max_abs_error"]))
        return (f"failed gate_outputs: SE block {worst['block']} gate max abs error {worst['max_abs_error']:.3g} "
                f"(cosine {worst['cosine']:.8f}) > atol {g['atol']}")
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
