"""Build and time what a latency table needs: kernel probes and whole networks, on one device.

I/O lives here (exports to a work folder, the device bench); the table and the search stay pure.
Every artifact goes through :func:`export.pipeline.export_one`, so it is checked in its own
runtime before it is written, and is timed by :func:`device_bench.bench.bench` with one
:class:`contract.measure.MeasureSpec` (:data:`TABLE_MEASURE` unless given): the table's entries, its
assembly networks and the measured check of ``edge-se scale`` are measured the same way.

Exports run in ``jobs`` worker processes (CPU work, no timing); timing runs afterwards, alone. On an
emulated device the runs count instructions, which do not depend on what else runs beside them:
there ``jobs`` runs go side by side (:func:`time_all`).
An artifact already in the work folder with its manifest is reused (the folder is per device,
format and dtype; remove it to rebuild).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.errors import first_line
from contract.formats import artifact_name, manifest_path
from contract.measure import MeasureSpec, timing_order
from device_bench.transports import emulated
from edge_se.errors import EdgeSeError, StageError
from edge_se.latency_key import Kernel
from edge_se.specs import ArchSpec

if TYPE_CHECKING:
    from device_bench.inventory import Device
    from device_bench.transports.base import RunOptions

TABLE_MEASURE = MeasureSpec(warmup=5, runs=20, min_seconds=0.2, repeats=3, cooldown_s=0.0, threads=1)
"""The measurement of every table entry, assembly network and measured check (unless one is given)."""

TABLE_PASSES = 3
"""Passes over all artifacts of one timing (each in its own shuffled order, each artifact in a fresh
process); an artifact's value is the median of its passes. One pass of the 94 artifacts of a
default table takes about a minute here, and the machine's speed moves by up to 10-15% over
minutes to hours (the same fp32 network re-timed an hour apart: 3.67 vs 3.18-3.40 ms): the passes
spread every artifact over the whole timing window, so a drift falls on all of them alike."""


def default_passes(device: str, given: int | None = None) -> int:
    """Timing passes: ``given``, else :data:`TABLE_PASSES`, or 1 on an emulated device.

    An emulated device gives instruction counts, which do not drift with the machine's speed: one
    pass measures them exactly (device_bench.emu).
    """
    if given is not None:
        return given
    return 1 if emulated(device) else TABLE_PASSES


CALIB_IMAGES = 64
"""Random calibration images per int8 artifact and for a network's BatchNorm (as ``edge-se export --calib random``)."""


@dataclass(frozen=True)
class Target:
    """Where and how a table is measured.

    Attributes:
        device: a device of ``edge-se bench`` (``local``, ``qemu-aarch64``, ``ssh://...``, an inventory name).
        fmt: ``pte`` or ``tflite``.
        dtype: ``fp32`` or ``int8``.
        runner: ``auto``, ``python`` or ``native`` (``.pte`` only): the on-device runner.
        measure: the measurement spec (its ``threads`` are the table's).
        inventory: the device inventory file (None: the default one).
        jobs: export worker processes; on an emulated device also the artifacts counted side by side.
        seed: seeds the random weights, calibration images and parity inputs.
        passes: timing passes over all artifacts (:data:`TABLE_PASSES`); the value is their median.
    """

    device: str
    fmt: str
    dtype: str
    runner: str = "auto"
    measure: MeasureSpec = field(default_factory=lambda: TABLE_MEASURE)
    inventory: str | None = None
    jobs: int = 1
    seed: int = 0
    passes: int = TABLE_PASSES

    def __post_init__(self) -> None:
        artifact_name("x", self.fmt, self.dtype)  # an unknown format or dtype: one line naming the flag
        if self.jobs < 1:
            raise EdgeSeError(f"--jobs must be >= 1, got {self.jobs}")
        if self.passes < 1:
            raise EdgeSeError(f"--passes must be >= 1, got {self.passes}")


def probe_name(k: Kernel) -> str:
    """The artifact name of a kernel's probe: ``probe_`` and 16 hex digits of its key's sha256."""
    return "probe_" + hashlib.sha256(k.key.encode()).hexdigest()[:16]


def network_name(spec: ArchSpec, resolution: int) -> str:
    """The artifact name of a whole network at one resolution."""
    return f"{spec.name}_r{resolution}"


def _log(msg: str) -> None:
    print(f"edge-se latency: {msg}", file=sys.stderr, flush=True)


def _export_task(task: tuple[str, Any, int, str, str, str, int]) -> tuple[str, str]:
    """Export one probe (``kind`` ``kernel``) or network (``network``).

    Returns ``("ok", path)`` or ``("error", one line naming the probe and the stage)``: a worker
    process hands back text, not an exception object.
    """
    import torch

    from export.pipeline import ExportOptions, export_one
    from export.sources import reestimate_batchnorm
    from quantize.calibration import Calibration

    kind, what, resolution, fmt, dtype, out_dir, seed = task
    if kind == "kernel":
        from edge_se.probes import probe_input, probe_module

        k: Kernel = what
        name, module, channels = probe_name(k), probe_module(k), k.input_channels
        images = probe_input(k, batch=CALIB_IMAGES, seed=seed + 1)
        label = k.key
    else:
        from edge_se.network import build

        spec: ArchSpec = what
        torch.manual_seed(seed)
        name, module, channels = network_name(spec, resolution), build(spec), 3
        images = torch.randn(CALIB_IMAGES, channels, resolution, resolution,
                             generator=torch.Generator().manual_seed(seed + 1))
        reestimate_batchnorm(module, [images])  # random weights: statistics of what they will see
        label = name
    path = Path(out_dir) / artifact_name(name, fmt, dtype)
    if path.is_file() and manifest_path(path).is_file():
        return "ok", str(path)
    calib = Calibration("random", [images], real=False, size=CALIB_IMAGES)
    # Timed, not shipped: an int8 probe must match its quantised graph, not the float model (random weights).
    opts = ExportOptions(resolution=resolution, input_channels=channels, seed=seed, int8_float_gate=False)
    try:
        export_one(module.eval(), name=name, fmt=fmt, dtype=dtype, out_dir=out_dir, opts=opts, calib=calib)
    except Exception as exc:  # any failure of one probe names it and its stage
        return "error", f"{label} ({fmt} {dtype}): {first_line(exc)}"
    return "ok", str(path)


def export_all(items: Sequence[tuple[str, Any, int]], target: Target, work: Path) -> list[Path]:
    """Export every ``(kind, kernel-or-spec, resolution)`` to ``work``; paths in the given order."""
    work.mkdir(parents=True, exist_ok=True)
    tasks = [(kind, what, res, target.fmt, target.dtype, str(work), target.seed) for kind, what, res in items]
    _log(f"exporting {len(tasks)} artifact(s) ({target.fmt} {target.dtype}) to {work} with {target.jobs} job(s)")
    if target.jobs == 1 or len(tasks) <= 1:
        done = [_export_task(t) for t in tasks]
    else:
        with ProcessPoolExecutor(target.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_export_task, tasks))
    failed = [text for status, text in done if status != "ok"]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise StageError("latency probe export", failed[0] + more)
    return [Path(text) for _, text in done]


def time_all(paths: Sequence[Path], target: Target, work: Path) -> list[tuple[float, str, dict[str, Any]]]:
    """Time every artifact on the target's device: ``(value, unit, bench record)`` each, in order.

    ``target.passes`` passes over all of ``paths``, pass ``r`` in the order shuffled with
    ``measure.seed + r`` (the inputs stay those of ``measure.seed``); an artifact's value is the
    median of its passes' values (p50 ms, or instructions per inference on an emulated device) and
    its record the pass nearest that median, with every pass's value in ``pass_values``.

    Raises:
        StageError: a run failed on the device (its line names the artifact and the reason).
    """
    from device_bench import inventory
    from device_bench.transports.base import RunOptions

    opts = RunOptions(measure=target.measure, runner=target.runner)  # type: ignore[arg-type]
    devices = inventory.load(target.inventory)
    passes: list[list[tuple[float, str, dict[str, Any]]]] = []
    for r in range(target.passes):
        # each pass in the order shuffled with its own seed (recorded in each record's order_mode and
        # order; on an emulated device dealt to jobs threads), the records returned in the order given;
        # the inputs stay those of measure.seed.
        records = _bench_pass(paths, target, devices, opts, work / "bench.jsonl", target.measure.seed + r)
        passes.append([_value(p, rec) for p, rec in zip(paths, records, strict=True)])
    out = []
    for per_path in zip(*passes, strict=True):
        values = [v[0] for v in per_path]
        value = statistics.median(values)
        _, unit, rec = min(per_path, key=lambda v: abs(v[0] - value))
        out.append((value, unit, rec | {"pass_values": values, "passes": len(values)}))
    return out


def _bench_pass(paths: Sequence[Path], target: Target, devices: dict[str, Device], opts: RunOptions, out: Path,
                seed: int) -> list[dict[str, Any]]:
    """One pass of :func:`device_bench.bench.bench` over ``paths`` (shuffled with ``seed``); records in the given order.

    On an emulated device with ``target.jobs`` > 1 the shuffled order is dealt round-robin to
    ``jobs`` threads, each a ``bench`` call of its own (each run is a QEMU process; appends to
    ``out`` take a lock): an instruction count does not move with the load beside it, a wall time
    would, so a timed device always runs one artifact at a time.
    """
    from device_bench.bench import bench

    def one(part: Sequence[Path], order: str) -> list[dict[str, Any]]:
        return bench([str(p) for p in part], [target.device], devices, opts, out, threads_given=True, order=order,
                     order_seed=seed)

    jobs = min(target.jobs, len(paths))
    if not emulated(target.device) or jobs <= 1:
        return one(paths, "shuffled")
    dealt = [timing_order(len(paths), order="shuffled", seed=seed)[j::jobs] for j in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        parts = list(pool.map(lambda idx: one([paths[i] for i in idx], "given"), dealt))
    by_index = {i: rec for idx, recs in zip(dealt, parts, strict=True) for i, rec in zip(idx, recs, strict=True)}
    return [by_index[i] for i in range(len(paths))]


def _value(path: Path, rec: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """One pass's ``(value, unit, record)`` of an artifact; a failed run is a StageError naming it."""
    if rec.get("status") != "ok":
        raise StageError("latency timing", f"{path.name} on {rec.get('device')}: {rec.get('error') or rec['status']}")
    if rec.get("emulated"):
        value, unit = rec.get("instructions_per_inference"), "instructions"
    else:
        value, unit = rec.get("p50_ms"), "ms"
    if not isinstance(value, (int, float)) or value <= 0:
        raise StageError("latency timing", f"{path.name} on {rec.get('device')}: no {unit} figure in the record")
    return float(value), unit, rec


__all__ = ["CALIB_IMAGES", "TABLE_MEASURE", "TABLE_PASSES", "Target", "default_passes", "export_all",
           "network_name", "probe_name", "time_all"]
