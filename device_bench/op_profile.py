"""Per-operator latency profiles (``edge-se bench --profile``), read on the host from the runtime's own trace.

What each runtime offers (checked in executorch 1.5.1 and ai-edge-litert 2.3.0):

- ``.pte``: ExecuTorch's ETDump. The Python runtime's ``_load_for_executorch(...,
  enable_etdump=True)`` and the native runner's ``Module`` with an ``ETDumpGen``
  (libexecutorch_etdump.so from the wheel) both record ``Method::execute``, each
  ``DELEGATE_CALL`` and, inside the XNNPACK delegate, one event per XNNPACK operator (XNNPACK's
  runtime profiling, forwarded by the delegate's XNNProfiler);
  :class:`executorch.devtools.Inspector` reads them without an ETRecord. Operator
  times come in whole microseconds, cut, not rounded: on a 32 px MobileNetV3, where most
  operators take under 1 us, they summed to 0.35 of ``Method::execute``. So every profile says
  ``op_timer_resolution_ms`` and ``truncation_bound_ms`` (operators x 1 us: the true sum is at
  most that much above the measured one), and is meaningful only where operators take many us.
- ``.tflite``: LiteRT's own profiler, reached through the C API of the wheel's libLiteRt.so
  (:mod:`device_bench.litert_profile`: LiteRT's Python API has none): a second load of the model
  with profiling on, whose summary lists every operator the XNNPACK delegate ran, in whole
  microseconds as in ETDump; the end-to-end time is each profiled inference's wall time around
  ``LiteRtRunCompiledModel``. One thread (XNNPACK's default options in LiteRT's CPU accelerator).

Nothing is apportioned: every millisecond here was measured.

The SE blocks are found in the operator sequence by structure (XNNPACK's names carry no module
path): a ``Mean`` (squeeze), two fully-connected or convolution operators (the FCs, with any
layout or activation operators between them), then element-wise operators of which the last
``Multiply`` is the scale and the rest the gate. int8 artifacts fuse the gate into the second FC's
output clamp (``quantize/int8_ops.py``), so there the gate has no time of its own
(``gate_fused``). The k-th pattern is the k-th SE block of the accounting (``blocks.3.se``);
where the counts differ, the SE figures are null with the reason, never guessed.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_se.errors import EdgeSeError

SCHEMA = "edge-se/op-profile/1"
#: Events that frame operators (a whole inference, a delegate call), not operators themselves.
FRAME_EVENTS = frozenset({"Method::execute", "DELEGATE_CALL", "OPERATOR_CALL", "Method::init",
                          "Program::load_method"})
#: XNNPACK's operator times are integers of microseconds.
XNNPACK_TIMER_RESOLUTION_MS = 0.001
#: Operators that only move or re-type data: allowed around the SE's FCs.
_GLUE = ("Transpose", "Convert", "Copy", "Static Reshape", "Clamp")
#: Operators a gate is made of (hard-sigmoid is Add, Clamp, Divide in fp32) and the scale.
_GATE = (*_GLUE, "Add", "Subtract", "Divide", "Sigmoid", "HardSigmoid", "Hard Sigmoid", "Minimum", "Maximum",
         "Multiply")
SE_PARTS = ("squeeze", "fcs", "gate", "scale")
#: Operators an unfused activation between the two FCs is made of (swish: Sigmoid, Multiply).
_FC_ACT = ("Sigmoid", "Multiply", "HardSwish", "Hard Swish", "Clamp", "Add", "Divide",
           "Invalid Unary Op")  # XNNPACK names int8 swish so in LiteRT 2.3.0 (as reported, not renamed)


@dataclass(frozen=True)
class OpEvent:
    """One operator of one inference: its runtime name and mean time over the kept runs (ms)."""

    name: str
    ms: float
    delegated: bool


@dataclass(frozen=True)
class Trace:
    """The kept runs of a profiled program: its operators in execution order and whole inferences (ms)."""

    ops: tuple[OpEvent, ...]
    end_to_end_ms: tuple[float, ...]
    runs: int


def op_type(name: str) -> str:
    """XNNPACK's operator name without its instance number: ``Add (ND) #3`` -> ``Add (ND)``."""
    return re.sub(r"\s+#\d+$", "", name)


def read_etdump(path: str | Path, *, warmup: int) -> Trace:
    """The operators of an ETDump's ``Execute`` block, each the mean of its runs after ``warmup``.

    Raises:
        EdgeSeError: the file is missing, unreadable as an ETDump, or has no kept runs.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeSeError(f"{path}: ETDump not found")
    from executorch.devtools import Inspector  # host only: it imports torch

    try:
        inspector = Inspector(etdump_path=str(path))
    except Exception as exc:  # noqa: BLE001 - the reader's errors have no common type
        raise EdgeSeError(f"{path}: not a readable ETDump ({type(exc).__name__}: {str(exc)[:120]})") from None
    blocks = [b for b in inspector.event_blocks if b.name == "Execute"]
    if not blocks:
        raise EdgeSeError(f"{path}: ETDump has no Execute block (no inference was recorded)")
    events = blocks[0].events
    execute = [e for e in events if e.name == "Method::execute"]
    runs = len(execute[0].perf_data.raw) - warmup if execute else 0
    if runs < 1:
        raise EdgeSeError(f"{path}: ETDump holds {runs + warmup} runs; {warmup} are warm-up, none left")
    ops = tuple(OpEvent(e.name, statistics.fmean(e.perf_data.raw[warmup:]), bool(e.is_delegated_op))
                for e in events if e.name not in FRAME_EVENTS and e.perf_data is not None)
    return Trace(ops, tuple(execute[0].perf_data.raw[warmup:]), runs)


def read_litert_trace(path: str | Path) -> Trace:
    """The operators of a LiteRT trace the runner wrote (:mod:`device_bench.litert_profile`), in execution order.

    Each operator is named as in an ETDump (``Convolution (NHWC, F32) IGEMM #1``: its type and its
    index in the delegate's execution order) with its mean time over the profiled runs.

    Raises:
        EdgeSeError: the file is missing, not a LiteRT trace, or its summary lists no operator.
    """
    import json

    from device_bench.litert_profile import TRACE_SCHEMA, LiteRtProfileError, parse_run_order

    path = Path(path)
    if not path.is_file():
        raise EdgeSeError(f"{path}: LiteRT trace not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeSeError(f"{path}: not a readable LiteRT trace ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schema") != TRACE_SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise EdgeSeError(f"{path}: not a LiteRT trace (schema {schema!r}, expected {TRACE_SCHEMA!r})")
    try:
        rows = parse_run_order(str(doc.get("summary", "")))
    except LiteRtProfileError as exc:
        raise EdgeSeError(f"{path}: {exc}") from None
    ops = tuple(OpEvent(f"{r['op_type']} #{r['index']}", r["avg_ms"], r["delegated"]) for r in rows)
    wall = tuple(float(x) for x in doc.get("end_to_end_ms") or ())
    if not wall:
        raise EdgeSeError(f"{path}: LiteRT trace holds no profiled run")
    return Trace(ops, wall, len(wall))


@dataclass(frozen=True)
class TraceSource:
    """How one runtime's trace is read (``read``: from the runner's ``op_profile``) and what it measured."""

    read: Callable[[Mapping[str, Any]], Trace]
    what: str


#: The runner's ``op_profile.source`` -> its :class:`TraceSource`.
TRACE_SOURCES: dict[str, TraceSource] = {
    "executorch-etdump": TraceSource(
        lambda meta: read_etdump(meta["path"], warmup=int(meta.get("warmup", 0))),
        "executorch-etdump: Method::execute, DELEGATE_CALL and XNNPACK's per-operator runtime profiling inside "
        "the delegate (Inspector, no ETRecord)"),
    "litert-profiler": TraceSource(
        lambda meta: read_litert_trace(meta["path"]),  # only the profiled runs are in it
        "litert-profiler: LiteRT's profile summary (libLiteRt.so's C API, profiling on), XNNPACK's per-operator "
        "times inside the delegate; end to end: the wall time of each profiled run"),
}


def _is(t: str, prefixes: Sequence[str]) -> bool:
    return t.startswith(tuple(prefixes))


def _is_fc(t: str) -> bool:
    return t.startswith("Fully Connected") or (t.startswith("Convolution") and "DWConv" not in t)


def find_se_blocks(types: Sequence[str]) -> list[dict[str, list[int]]]:
    """Indices of each SE block's parts (``squeeze``, ``fcs``, ``gate``, ``scale``) in an operator-type sequence."""
    found = []
    i = 0
    while i < len(types):
        if not types[i].startswith("Mean"):
            i += 1
            continue
        parts: dict[str, list[int]] = {"squeeze": [i], "fcs": [], "gate": [], "scale": []}
        j = i + 1
        while j < len(types) and _is(types[j], _GLUE):  # layout changes before fc1 belong to the squeeze
            parts["squeeze"].append(j)
            j += 1
        for _ in range(2):  # fc1, its activation (if not fused: swish is Sigmoid then Multiply), fc2
            while parts["fcs"] and j < len(types) and _is(types[j], (*_GLUE, *_FC_ACT)):
                parts["fcs"].append(j)
                j += 1
            if j < len(types) and _is_fc(types[j]):
                parts["fcs"].append(j)
                j += 1
        run = []
        while j < len(types) and _is(types[j], _GATE):
            run.append(j)
            j += 1
        muls = [k for k in run if types[k].startswith("Multiply")]
        if sum(_is_fc(types[k]) for k in parts["fcs"]) == 2 and muls:
            parts["gate"] = [k for k in run if k < muls[-1]]
            parts["scale"] = [muls[-1]]
            found.append(parts)
            i = muls[-1] + 1
        else:
            i += 1
    return found


def _se_section(ops: Sequence[OpEvent], *, end_to_end_ms: float, op_sum_ms: float, macs: int | None,
                se_macs: int | None, se_names: Sequence[str] | None) -> dict[str, Any]:
    blocks = find_se_blocks([op_type(o.name) for o in ops])
    macs_share = se_macs / macs if macs and se_macs is not None else None
    out: dict[str, Any] = {"macs": se_macs, "model_macs": macs, "macs_share": macs_share}
    if se_names is not None and len(blocks) != len(se_names):
        return {**out, "matched": False, "latency_ms": None, "latency_share": None,
                "reason": f"found {len(blocks)} SE patterns in the operator sequence; the model has "
                          f"{len(se_names)} SE blocks"}
    names = list(se_names) if se_names is not None else [f"se[{k}]" for k in range(len(blocks))]
    parts = {p: sum(ops[k].ms for b in blocks for k in b[p]) for p in SE_PARTS}
    total = sum(parts.values())
    return {
        **out, "matched": True, "blocks_found": len(blocks),
        "latency_ms": total,
        "latency_share": total / end_to_end_ms,
        "latency_share_of_ops": total / op_sum_ms if op_sum_ms else None,
        "gate_fused": bool(blocks) and all(not b["gate"] for b in blocks),
        "truncation_bound_ms": sum(len(b[p]) for b in blocks for p in SE_PARTS) * XNNPACK_TIMER_RESOLUTION_MS,
        "parts": {p: {"ms": parts[p], "share": parts[p] / end_to_end_ms, "operators": sum(len(b[p]) for b in blocks),
                      "truncation_bound_ms": sum(len(b[p]) for b in blocks) * XNNPACK_TIMER_RESOLUTION_MS,
                      "op_types": sorted({op_type(ops[k].name) for b in blocks for k in b[p]})} for p in SE_PARTS},
        "blocks": [{"name": n, "ms": sum(ops[k].ms for p in SE_PARTS for k in b[p])}
                   for n, b in zip(names, blocks, strict=True)],
    }


def sentence(profile: Mapping[str, Any]) -> str | None:
    """``SE is X% of MACs and Y% of measured latency`` (Y: SE operators over the profiled inference), or None.

    Where the SE operators' times were cut to whole microseconds, the sentence adds the most they
    can be: Y plus one microsecond per SE operator (``se.truncation_bound_ms``). Where Y is more than
    twice X, it says why from the measured parts: every SE MAC is in the two FCs, so the time of the
    squeeze, gate and scale (a mean over and a multiply of the whole feature map, and the gate's
    element-wise operators: memory-bound, no MACs) is what the MAC count does not see.
    """
    se = profile.get("se") or {}
    if not se.get("matched") or se.get("macs_share") is None or se.get("latency_share") is None:
        return None
    said = f"SE is {100 * se['macs_share']:.2f}% of MACs and {100 * se['latency_share']:.1f}% of measured latency"
    bound = se.get("truncation_bound_ms") or 0.0
    if bound and profile.get("end_to_end_ms"):
        top = (se["latency_ms"] + bound) / profile["end_to_end_ms"]
        said += f" (at most {100 * top:.1f}%: XNNPACK cuts operator times to whole microseconds)"
    parts = se.get("parts") or {}
    if se["latency_share"] > 2 * se["macs_share"] and se.get("latency_ms") and parts:
        no_macs = sum(parts[p]["ms"] for p in ("squeeze", "gate", "scale") if p in parts)
        said += (f"; over twice its MAC share because {100 * no_macs / se['latency_ms']:.0f}% of SE's time is its "
                 "squeeze, gate and scale, memory-bound passes over the feature map that do no MACs")
    return said


def build_profile(trace: Trace, *, macs: int | None = None, se_macs: int | None = None,
                  se_names: Sequence[str] | None = None, bench_p50_ms: float | None = None) -> dict[str, Any]:
    """The profile: time per operator type, SE share of latency beside SE share of MACs, sum vs end to end.

    Args:
        trace: the profiled runs (:func:`read_etdump`).
        macs: the model's MACs for one image (the manifest's ``macs``).
        se_macs: of which in SE blocks (the manifest's ``se_macs``).
        se_names: the SE blocks in execution order (``blocks.3.se``), or None if unknown.
        bench_p50_ms: the unprofiled median latency of the same artifact (the bench record), to show
            what the profiling costs.

    Returns:
        A JSON-ready dict; times in ms, shares as fractions.
    """
    op_sum = sum(o.ms for o in trace.ops)
    e2e = statistics.fmean(trace.end_to_end_ms)
    by_type: dict[str, list[float]] = {}
    for o in trace.ops:
        by_type.setdefault(op_type(o.name), []).append(o.ms)
    ranked = sorted(by_type.items(), key=lambda kv: -sum(kv[1]))
    table = [{"op_type": t, "total_ms": sum(v), "count": len(v), "share": sum(v) / op_sum if op_sum else 0.0}
             for t, v in ranked]
    p50 = statistics.median(trace.end_to_end_ms)
    delegated = sum(1 for o in trace.ops if o.delegated)
    return {
        "schema": SCHEMA, "status": "ok", "runs": trace.runs,
        "per_op_sum_ms": op_sum, "end_to_end_ms": e2e, "end_to_end_p50_ms": p50,
        "sum_to_end_to_end": op_sum / e2e, "unattributed_ms": e2e - op_sum,
        "operators": len(trace.ops), "delegated_operators": delegated,
        "op_timer_resolution_ms": XNNPACK_TIMER_RESOLUTION_MS if delegated else None,
        "truncation_bound_ms": delegated * XNNPACK_TIMER_RESOLUTION_MS,
        "bench_p50_ms": bench_p50_ms,
        "profiled_over_bench_p50": p50 / bench_p50_ms if bench_p50_ms else None,
        "op_types": table,
        "se": _se_section(trace.ops, end_to_end_ms=e2e, op_sum_ms=op_sum, macs=macs, se_macs=se_macs,
                          se_names=se_names),
    }


def se_block_names(manifest: Mapping[str, Any]) -> list[str] | None:
    """The SE blocks of the manifest's model in execution order (``blocks.3.se``), or None if not an edge-se model."""
    import edge_se
    from edge_se.registry import get_spec

    variant = manifest.get("variant")
    se = variant.get("se") if isinstance(variant, Mapping) else None
    se = se if isinstance(se, Mapping) else {}  # another tool's manifest may say only "se": true
    try:
        spec = get_spec(str(manifest.get("model")), gate=se.get("gate"), placement=se.get("placement"))
        rows = edge_se.count(spec, resolution=int(manifest["resolution"])).rows
    except (EdgeSeError, KeyError, TypeError, ValueError):
        return None
    return [r.name.rsplit(".", 1)[0] for r in rows if r.se and r.kind == "gate"]


def trace_of(result: Mapping[str, Any]) -> Trace:
    """The trace a runner result's ``op_profile`` names (an ETDump, or LiteRT's profile as JSON).

    Raises:
        EdgeSeError: the runner could not profile, the result names no trace, or it cannot be read.
    """
    meta = result.get("op_profile")
    if isinstance(meta, dict) and meta.get("error"):
        raise EdgeSeError(f"the runner could not profile: {meta['error']}")
    if not isinstance(meta, dict) or "path" not in meta:
        raise EdgeSeError("runner result has no op_profile: run it with --etdump")
    return _trace_source(meta).read(meta)


def _trace_source(meta: Mapping[str, Any]) -> TraceSource:
    source = str(meta.get("source", "executorch-etdump"))
    if source not in TRACE_SOURCES:
        raise EdgeSeError(f"runner op_profile source {source!r} unknown; valid: {', '.join(TRACE_SOURCES)}")
    return TRACE_SOURCES[source]


def profile_from_run(manifest: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """The profile of one runner result whose ``op_profile`` names an ETDump (see :func:`build_profile`).

    Raises:
        EdgeSeError: the result names no ETDump, or it cannot be read.
    """
    trace = trace_of(result)
    meta = result["op_profile"]
    prof = build_profile(trace, macs=manifest.get("macs"), se_macs=manifest.get("se_macs"),
                         se_names=se_block_names(manifest), bench_p50_ms=result.get("p50_ms"))
    return {**prof, "source": _trace_source(meta).what, "etdump": meta["path"], "warmup": meta.get("warmup"),
            "threads": meta.get("threads", result.get("threads"))}


#: XNNPACK operators that do a layer's arithmetic: one per convolution or linear layer of the graph.
COMPUTE_OPS = ("Fully Connected", "Convolution")
#: A float prefix is worth building only for a predicted saving of at least this fraction of the
#: int8 artifact's summed operator time: less is within the profile's noise and its truncation
#: (whole microseconds per operator).
PREFIX_MIN_GAIN = 0.03


def unit_times(trace: Trace, compute_units: Sequence[str]) -> dict[str, float]:
    """Measured ms per execution unit: each operator charged to the unit of the last compute operator before it.

    Args:
        trace: a profiled artifact.
        compute_units: the unit (``blocks.3``) of every convolution and linear layer, in graph order
            (:func:`quantize.float_prefix.compute_units`); the k-th compute operator of the trace
            (:data:`COMPUTE_OPS`) is the k-th layer. Operators before the first one (an input
            conversion or transpose) go to the first layer's unit.

    Raises:
        EdgeSeError: the trace's compute operators do not match the layers one to one.
    """
    count = sum(1 for o in trace.ops if o.name.startswith(COMPUTE_OPS))
    if count != len(compute_units) or not compute_units:
        raise EdgeSeError(f"the profile has {count} convolution/fully-connected operators and the network "
                          f"{len(compute_units)} convolution/linear layers: cannot align them per unit")
    out = dict.fromkeys(compute_units, 0.0)
    k = -1
    for o in trace.ops:
        if o.name.startswith(COMPUTE_OPS):
            k += 1
        out[compute_units[max(k, 0)]] += o.ms
    return out


def prefix_gain(int8: Mapping[str, float], fp32: Mapping[str, float]) -> list[dict[str, Any]]:
    """Predicted latency (ms) of the int8 artifact with its first N units in fp32, for every N.

    Pure arithmetic on two measured profiles of one network (the same units, in the same
    execution order): ``sum(int8) - sum(int8[:N]) + sum(fp32[:N])``. The quantize of the
    activation at the boundary is not in it (one pass over one feature map; the int8 artifact's
    input quantize, which the prefix removes, is of the same order).

    Returns:
        One row per N = 0 .. len - 1: ``{"n", "last_unit", "predicted_ms", "saved_ms"}``.
    """
    order = list(int8)
    if list(fp32) != order:
        raise EdgeSeError("prefix_gain: the int8 and fp32 profiles have different units")
    total = sum(int8.values())
    rows: list[dict[str, Any]] = [{"n": 0, "last_unit": None, "predicted_ms": total, "saved_ms": 0.0}]
    saved = 0.0
    for n, unit in enumerate(order[:-1], start=1):
        saved += int8[unit] - fp32[unit]
        rows.append({"n": n, "last_unit": unit, "predicted_ms": total - saved, "saved_ms": saved})
    return rows


def ranked_prefixes(*tables: Sequence[Mapping[str, Any]],
                    min_gain: float = PREFIX_MIN_GAIN) -> list[dict[str, Any]]:
    """Every float prefix worth building, best first: lowest predicted latency relative to all-int8, on average.

    Args:
        tables: one :func:`prefix_gain` table per condition the artifact will run under (thread
            counts: one artifact serves them all), over the same units.
        min_gain: only N whose mean relative saving is at least this fraction (:data:`PREFIX_MIN_GAIN`).

    Returns:
        For each such N > 0, its row of the first table plus ``relative`` (mean over tables of
        predicted / all-int8 ms) and ``predicted_each_ms`` (its predicted ms in every table);
        ties go to the shorter prefix. Empty when none saves enough (or all-int8 sums to 0 ms).

    Raises:
        EdgeSeError: no table, or tables of different lengths.
    """
    if not tables or len({len(t) for t in tables}) != 1:
        raise EdgeSeError(f"ranked_prefixes: needs tables of the same units, got lengths {[len(t) for t in tables]}")
    base = [t[0]["predicted_ms"] for t in tables]
    if min(base) <= 0:
        return []

    def row(n: int) -> dict[str, Any]:
        rel = sum(t[n]["predicted_ms"] / b for t, b in zip(tables, base, strict=True)) / len(tables)
        return {**tables[0][n], "relative": rel, "predicted_each_ms": [t[n]["predicted_ms"] for t in tables]}

    rows = sorted((row(n) for n in range(1, len(tables[0]))), key=lambda r: (r["relative"], r["n"]))
    return [r for r in rows if 1.0 - r["relative"] >= min_gain]


def op_sequence(trace: Trace) -> tuple[str, ...]:
    """The operator types the runtime ran, in execution order, without times (``Convolution (NHWC, QC8) IGEMM``).

    XNNPACK's names carry the layout and the data types of the kernel it chose, so two artifacts of
    one architecture at one resolution with equal sequences ran the same kernels on the same shapes.
    """
    return tuple(op_type(o.name) for o in trace.ops)


def extra_ops(ours: Sequence[str], theirs: Sequence[str]) -> list[str] | None:
    """The operators only ``theirs`` ran, if ``ours`` ran nothing else: ``ours`` is a subsequence of ``theirs``.

    Pure. ``None`` when ``ours`` ran an operator ``theirs`` did not (at its place in the order);
    otherwise ``theirs``' operators left over after matching every one of ``ours`` in order (greedy,
    earliest first), in execution order; ``[]`` for equal sequences.
    """
    left: list[str] = []
    i = 0
    for op in theirs:
        if i < len(ours) and op == ours[i]:
            i += 1
        else:
            left.append(op)
    return left if i == len(ours) else None


def profile_path(out: Path) -> Path:
    """Where ``edge-se bench --out OUT`` appends its profiles: ``OUT``'s stem + ``.profile.jsonl`` beside it."""
    return out.with_name(out.stem + ".profile.jsonl")


def etdump_path(out: Path, artifact: Path, device: str) -> Path:
    """Where the raw trace of one artifact on one device is kept: ``OUT.etdump/`` (ETDump, or LiteRT's as JSON)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", device)
    suffix = "litert.json" if artifact.suffix == ".tflite" else "etdp"
    return out.with_name(out.stem + ".etdump") / f"{artifact.name}.{safe}.{suffix}"


def unavailable_reason(fmt: str, transport_kind: str) -> str | None:
    """Why no profile can be taken of this format on this transport, or None if one can (local: both formats)."""
    if transport_kind != "local":
        return f"profiles are taken on the local device only (the trace is not fetched back from {transport_kind})"
    return None
