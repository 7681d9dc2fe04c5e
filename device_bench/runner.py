"""The on-device benchmark runner: one artifact, one JSON object on stdout.

Runs on the device with numpy and a runtime only (never torch or edge_se; ``contract``, standard
library only, is staged beside it)::

    python -m device_bench.runner model.tflite --manifest model.tflite.json --runs 50 --threads 1

Method (the measurement flags are :class:`contract.measure.MeasureSpec`'s, with its defaults):
load (timed), one first inference (timed), ``--warmup`` untimed runs, then per repeat at least
``--runs`` timed inferences *and* at least ``--min-seconds`` of them (at most ``--max-runs``),
``--cooldown`` seconds of idle between repeats. Inputs come from the manifest with a fixed ``--seed`` (or
``--input-file`` real samples). The output checksum is the sha256 of the first inference's
output bytes, so a run that computed nothing (or something else) is caught by comparison. The
result is a flat ``edge-se/bench/2`` record (:mod:`contract.bench`) whose latency, spread and
stability keys are :func:`device_bench.stats.combine_repeats`'s. Errors print one line on
stderr and exit with status 2.

An artifact exported with ``--gate-outputs --gate-stats`` (manifest ``gate_outputs.stats``) also
gets ``gate_score``: :func:`device_bench.gate_score.score` of the last measured inference's SE gate
outputs (dequantised with the manifest's scale and zero point), its threshold and whether it is
flagged. The score is computed after timing, outside the timed loop, so the latency is the
artifact's alone.

``--etdump PATH``: after timing, a second load of the artifact with the runtime's profiler on runs
``--profile-runs`` inferences (after ``max(--warmup, 2)`` more) and writes the trace to PATH:
``.pte``, ExecuTorch's ETDump (:meth:`device_bench.runtimes.ExecutorchSession.write_op_profile`);
``.tflite``, LiteRT's profile summary and each profiled run's wall time as JSON
(:meth:`device_bench.runtimes.TfliteSession.write_op_profile`, :mod:`device_bench.litert_profile`).
The record gets ``op_profile`` (source, where, how many runs), or ``op_profile.error`` when the
runtime here has no profiler; the timed figures stand either way. The host reads the trace
(:mod:`device_bench.op_profile`).

``--paired-with B --paired-manifest MB``: a second artifact taking inputs of the same size (a plain
twin, say) is loaded and warmed up beside the first and timed in alternation with it: in every repeat each
artifact runs its block of ``--runs`` inferences (``--min-seconds``, ``--max-runs``), and which goes
first alternates, so drift of a shared machine (frequency, other jobs) falls on both alike. The
record stays the first artifact's; ``paired`` holds B's name, sha256 and latency figures (the same
keys, its repeats paired with the record's by index), and :func:`device_bench.stats.paired_ratio`
gives the first one's cost over B from them. A cost of a few % on a 0.07 ms inference is below what
separate processes can resolve here (byte-identical artifacts timed in separate processes differed
by up to 1.2 points); one process times both under one memory map and one warm CPU. Where B's
manifest gives its inputs another dtype or scale (an int8-input ``.tflite`` beside its fp32 twin) or
another dimension order (an NHWC ``.tflite`` beside an NCHW one), B runs on the seeded inputs its own
manifest describes (the same draws, quantised or laid out as it says; ``paired.inputs``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from contract import measure as measure_spec
from contract.bench import SCHEMA as RESULT_SCHEMA
from contract.bench import validate as validate_record
from contract.errors import ContractError
from device_bench import stats, sysinfo
from device_bench.manifest import ManifestError, load_input_file, load_manifest, make_inputs, verify_artifact
from device_bench.runtimes import RuntimeUnavailable, open_session

#: The file descriptor whose close() marks a point of an instruction count: no process holds it
#: (it is above every fd limit), so the call only fails with EBADF, and the counting QEMU plugin
#: (device_bench/native/insn_plugin.c, MARK_FD) records the count at it.
COUNT_MARK_FD = 0x5E5E5E


def count_mark() -> None:
    """One mark for the instruction-counting plugin (a no-op anywhere else)."""
    try:
        os.close(COUNT_MARK_FD)
    except OSError:
        pass

#: Profiled inferences dropped before the ones kept: the first run of a fresh load pays for
#: XNNPACK's set-up and cold caches (2 ms against 0.15 ms on a 32 px MobileNetV3 here).
PROFILE_MIN_WARMUP = 2


def output_summary(outputs: Sequence[np.ndarray]) -> dict[str, Any]:
    """Checksum and plain figures of a list of outputs (C order, little-endian bytes)."""
    h = hashlib.sha256()
    total = 0
    nonzero = 0
    abs_sum = 0.0
    for arr in outputs:
        a = np.ascontiguousarray(arr)
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        total += a.size
        nonzero += int(np.count_nonzero(a))
        abs_sum += float(np.abs(a.astype(np.float64)).sum())
    return {
        "output_checksum": "sha256:" + h.hexdigest(),
        "outputs": [{"shape": list(a.shape), "dtype": a.dtype.name} for a in outputs],
        "output_abs_sum": abs_sum,
        "output_nonzero_fraction": nonzero / total if total else 0.0,
    }


def gate_score_record(manifest: Any, outputs: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """``{"value", "threshold", "flagged", "method", "blocks"}`` of one inference's gate outputs, or None.

    None when the manifest has no ``gate_outputs`` or no stats in it. Gates are read by the
    manifest's slots (:func:`device_bench.gate_score.gate_arrays`: ``output_index`` and ``offset``)
    in the order of ``stats["blocks"]``, dequantised with each output's scale and zero point
    (int8 ``.tflite``), as ``[1, C]``.

    Raises:
        ManifestError: the manifest's gate block does not match the stats or the outputs.
    """
    from device_bench import gate_score

    block = manifest.get("gate_outputs")
    stats = block.get("stats") if isinstance(block, dict) else None
    if stats is None:
        return None
    try:
        by_name = gate_score.gate_arrays(outputs, block["blocks"], quant=manifest.output_quant)
    except ValueError as exc:
        raise ManifestError(f"gate_outputs: {exc}") from None
    missing = [b["name"] for b in stats["blocks"] if b["name"] not in by_name]
    if missing:
        raise ManifestError(f"gate_outputs: no output for SE block {missing[0]!r}")
    gates = [by_name[b["name"]] for b in stats["blocks"]]
    try:
        value = float(gate_score.score(gates, stats)[0])
    except ValueError as exc:
        raise ManifestError(f"gate_outputs: {exc}") from None
    return {"value": value, "threshold": float(stats["threshold"]),
            "flagged": bool(gate_score.flag(np.array([value]), stats)[0]),
            "method": stats.get("method"), "blocks": len(gates)}


def _set_affinity(cpus: str | None) -> list[int] | None:
    if not cpus:
        return None
    try:
        wanted = {int(c) for c in cpus.split(",") if c.strip()}
    except ValueError:
        raise ManifestError(f"--affinity {cpus!r}: expected comma-separated CPU numbers like 0,1") from None
    os.sched_setaffinity(0, wanted)
    return sorted(os.sched_getaffinity(0))


def _same_inputs(manifest: Any, other: Any, other_path: str, path: str, *, files: bool) -> bool:
    """--paired-with: whether ``other`` takes ``manifest``'s input tensors exactly (then it runs on the same arrays).

    Otherwise it runs on the seeded inputs its own manifest describes: the same uniform draws in
    its own range, quantised as it says (an int8-input ``.tflite`` beside its fp32 twin), in its own
    layout (Keras' NHWC ``.tflite`` beside an NCHW one: the same dimensions in another order). The
    shapes must match up to that order, and with ``--input-file`` the tensors must match exactly
    (the files are the first artifact's).
    """
    if len(manifest.inputs) != len(other.inputs) or any(
            sorted(a.shape) != sorted(b.shape) for a, b in zip(manifest.inputs, other.inputs, strict=False)):
        raise ManifestError(f"{other_path}: input shapes {[list(t.shape) for t in other.inputs]} are not "
                            f"{path}'s {[list(t.shape) for t in manifest.inputs]} (in any dimension order); "
                            "--paired-with times two artifacts on inputs of the same size")

    def key(m: Any) -> list[tuple[Any, ...]]:
        return [(tuple(t.shape), t.dtype, t.scale, t.zero_point) for t in m.inputs]
    same = key(manifest) == key(other)
    if files and not same:
        raise ManifestError(f"{other_path}: inputs differ from {path}'s (shape, dtype, scale or zero point); "
                            "with --input-file --paired-with needs an artifact taking the same tensors")
    return same


def _block(session: Any, spec: measure_spec.MeasureSpec) -> tuple[list[float], float]:
    """One repeat's timed inferences (ms) and their total (s): at least ``runs`` and ``min_seconds``."""
    clock = time.perf_counter_ns
    samples: list[float] = []
    spent_ns = 0
    while len(samples) < spec.runs or spent_ns < spec.min_seconds * 1e9:
        t = clock()
        session.run()
        dt = clock() - t
        spent_ns += dt
        samples.append(dt / 1e6)
        if spec.max_runs and len(samples) >= spec.max_runs:
            break
    return samples, spent_ns / 1e9


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by the parsed arguments; return the result object.

    Raises:
        ContractError: a measurement flag out of range (before anything is loaded).
    """
    spec = measure_spec.from_namespace(args)
    manifest = load_manifest(args.manifest)
    digest = verify_artifact(args.artifact, manifest)
    paired, same_inputs = None, True
    if args.paired_with:
        paired_manifest = load_manifest(args.paired_manifest)
        paired = (paired_manifest, verify_artifact(args.paired_with, paired_manifest))
        same_inputs = _same_inputs(manifest, paired_manifest, args.paired_manifest, args.manifest,
                                   files=bool(args.input_file))
    affinity = _set_affinity(spec.affinity)
    if args.input_file:
        if len(args.input_file) != len(manifest.inputs):
            raise ManifestError(f"--input-file given {len(args.input_file)} times; "
                                f"the model has {len(manifest.inputs)} inputs")
        inputs = [load_input_file(p, s) for p, s in zip(args.input_file, manifest.inputs, strict=True)]
    else:
        inputs = make_inputs(manifest, spec.seed)

    t0 = time.perf_counter()
    session = open_session(manifest.format, args.artifact, manifest.inputs, spec.threads)
    session.set_inputs(inputs)
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    session.run()
    first_ms = (time.perf_counter() - t0) * 1e3
    first = session.outputs()
    if args.dump_outputs:
        with open(args.dump_outputs, "wb") as fh:
            for a in first:
                fh.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    for _ in range(spec.warmup):
        session.run()
    if args.count_only:
        # Instruction counting: the same instructions every time, so no clock reads and no
        # statistics, whose cost depends on the timings (sorting, float formatting).
        if args.count_marks:  # two spans between marks; no collection may fall into one of them
            gc.disable()
            count_mark()
            for _ in range(args.count_marks):
                session.run()
            count_mark()
        for _ in range(spec.runs):
            session.run()
        if args.count_marks:
            count_mark()
        return {"schema": RESULT_SCHEMA, "runner": "python", "count_only": True, "runs": spec.runs,
                "output_checksum": output_summary(first)["output_checksum"]}

    other = None
    if paired is not None:  # loaded after the first artifact's load was timed; warmed up the same way
        other = open_session(paired[0].format, args.paired_with, paired[0].inputs, spec.threads)
        other.set_inputs(inputs if same_inputs else make_inputs(paired[0], spec.seed))
        for _ in range(spec.warmup + 1):
            other.run()
    timed: dict[str, tuple[list[list[float]], list[float]]] = {"main": ([], []), "paired": ([], [])}
    for r in range(spec.repeats):
        if r:
            time.sleep(spec.cooldown_s)
        order = [("main", session)] + ([("paired", other)] if other is not None else [])
        for which, sess in order[::-1] if r % 2 else order:  # which goes first alternates
            samples, spent = _block(sess, spec)
            timed[which][0].append(samples)
            timed[which][1].append(spent)
    repeats, seconds = timed["main"]
    last = session.outputs()
    gate = gate_score_record(manifest, last)
    summary = output_summary(first)
    result: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "runner": "python",
        "artifact": os.path.basename(args.artifact),
        "manifest_sha256": digest,
        "format": manifest.format,
        "runtime": {"name": session.name, "version": session.version},
        "threads": session.threads,
        "affinity": affinity,
        "measure": spec.to_dict(),
        "seed": None if args.input_file else spec.seed,
        "inputs_from": "files" if args.input_file else "seed",
        **stats.combine_repeats(repeats, seconds=seconds, unstable_pct=spec.unstable_pct),
        "total_seconds": sum(seconds),
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "peak_rss_bytes": sysinfo.peak_rss_bytes(),
        **summary,
        "outputs_repeatable": output_summary(last)["output_checksum"] == summary["output_checksum"],
        **sysinfo.describe(),
    }
    if gate is not None:
        result["gate_score"] = gate
    if paired is not None:  # native/runner.cpp: the same object
        result["paired"] = {"artifact": os.path.basename(args.paired_with), "manifest_sha256": paired[1],
                            "order": "alternating",
                            "inputs": "shared" if same_inputs else "own",
                            **stats.combine_repeats(timed["paired"][0], seconds=timed["paired"][1],
                                                  unstable_pct=spec.unstable_pct)}
    if args.etdump:
        try:
            result["op_profile"] = session.write_op_profile(args.etdump, runs=args.profile_runs,
                                                            warmup=max(spec.warmup, PROFILE_MIN_WARMUP))
        except RuntimeUnavailable as exc:  # the timed figures stand; the profile line says why it is missing
            result["op_profile"] = {"error": str(exc)}
    return result


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the runner (the native runner takes the same); measurement flags from ``contract.measure``."""
    p = argparse.ArgumentParser(prog="python -m device_bench.runner", description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="the .tflite or .pte file")
    p.add_argument("--manifest", required=True, help="its manifest (edge-se/manifest/1)")
    measure_spec.add_arguments(p.add_argument_group("measurement (contract.measure.MeasureSpec)"))
    p.add_argument("--input-file", action="append", default=None,
                   help="a real sample per input (.npy or raw little-endian bytes), in input order")
    p.add_argument("--dump-outputs", default=None, help="write the first inference's output bytes here")
    p.add_argument("--etdump", default=None,
                   help="after timing, write the runtime's per-operator trace of --profile-runs inferences here "
                        "(.pte: an ExecuTorch ETDump; .tflite: LiteRT's profile as JSON)")
    p.add_argument("--profile-runs", type=int, default=20, help="inferences in the --etdump trace")
    p.add_argument("--count-only", action="store_true",
                   help="run exactly --runs inferences untimed and print only the checksum (instruction counting)")
    p.add_argument("--count-marks", type=int, default=0, metavar="N0",
                   help="with --count-only: first N0 runs, then the --runs runs, with a mark (a close() of "
                        "COUNT_MARK_FD, which the counting plugin records) before, between and after")
    p.add_argument("--paired-with", default=None, metavar="ARTIFACT",
                   help="a second artifact on the same inputs, timed in alternating blocks with the first "
                        "(the record's 'paired'; device_bench.stats.paired_ratio)")
    p.add_argument("--paired-manifest", default=None, metavar="FILE", help="--paired-with's manifest")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the runner; print the result JSON on stdout; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.profile_runs < 1:
            raise ContractError(f"--profile-runs must be >= 1, got {args.profile_runs}")
        if (args.paired_with is None) != (args.paired_manifest is None):
            raise ContractError("--paired-with and --paired-manifest go together")
        if args.paired_with and (args.count_only or args.etdump):
            raise ContractError("--paired-with times two artifacts; it takes neither --count-only nor --etdump")
        if args.count_marks < 0 or (args.count_marks and not args.count_only):
            raise ContractError(f"--count-marks takes --count-only and a count >= 1, got {args.count_marks}")
        result = measure(args)
        if not args.count_only:  # a counted process does no more than it must (count-only: 4 fixed keys)
            # What it prints is a valid record, with every key a runner of this checkout writes.
            validate_record(result, "device_bench.runner result", fresh=True)
    except (ContractError, ManifestError, RuntimeUnavailable, OSError) as exc:
        print(f"device_bench.runner: error: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
