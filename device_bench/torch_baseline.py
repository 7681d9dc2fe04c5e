"""Desktop PyTorch baselines: eager and ``torch.compile`` on the CPU and, when present, on CUDA.

Each (mode, dtype, batch) gives one JSON line in the same format as device runs (a flat
``edge-se/bench/2`` record, :mod:`contract.bench`, validated before it is written), timed by a
:class:`contract.measure.MeasureSpec` like every other path. CPU timing
uses ``perf_counter`` around each call (CPU ops are synchronous); CUDA timing uses CUDA events
recorded around each call after warm-up, reading each pair after the end event completes, so
host launch overhead and asynchrony are measured the way the GPU sees them.

``torch.compile``'s first call compiles (on this 2-core machine 40-70 s per network with a cold
inductor cache, 8 s with a warm one). :func:`warm_compile` (``--warm-only``) makes only those first
calls, filling the inductor cache (``TORCHINDUCTOR_CACHE_DIR``) so that a later timing run, one that
must have the machine to itself, does not spend its exclusive time compiling; every compile record
says in ``compile_cache`` how many FX graphs came from the cache and how many were compiled, so its
``first_inference_ms`` says which it was.
Without CUDA, a ``--torch-device cuda`` request says so in one line and records the CPU baseline only,
or, with ``without_cuda="skip"`` (``--without-cuda skip``, what a sweep's ``cuda`` baseline cell asks
for, since its ``cpu`` cell already times the CPU), one ``skipped`` record and nothing timed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import bench as record
from contract.errors import first_line
from contract.measure import MeasureSpec
from device_bench import stats, sysinfo
from device_bench.runner import output_summary
from edge_se.errors import EdgeSeError

DTYPES = ("fp32", "fp16", "bf16")
#: What a ``cuda`` request does where there is no CUDA: time the CPU instead, or record one skip.
WITHOUT_CUDA = ("cpu", "skip")

#: The larger batch timed on a GPU beside batch 1 (throughput regime).
GPU_LARGE_BATCH = 32


@dataclass(frozen=True)
class TorchBenchConfig:
    """What to time; empty ``dtypes``/``batches`` pick the device's defaults."""

    model: str
    device: str = "cpu"
    dtypes: tuple[str, ...] = ()
    batches: tuple[int, ...] = ()
    resolution: int | None = None
    compile: bool = True
    measure: MeasureSpec = MeasureSpec()
    without_cuda: str = "cpu"  # a cuda request without CUDA: "cpu" times the CPU instead, "skip" records a skip


def fxgraph_cache_counts() -> dict[str, int]:
    """Inductor's FX graph cache lookups in this process so far: ``{"hits": n, "misses": n}``."""
    from torch._dynamo.utils import counters

    c = counters["inductor"]
    return {"hits": int(c["fxgraph_cache_hit"]), "misses": int(c["fxgraph_cache_miss"])}


def _torch_dtype(torch: Any, dtype: str) -> Any:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _seeded_input(torch: Any, batch: int, res: int, seed: int, device: str, tdtype: Any) -> Any:
    """The timed input: uniform in [-1, 1), drawn from ``seed`` (the same for every mode and run)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(device=device, dtype=tdtype)


def _since(before: dict[str, int]) -> dict[str, int]:
    now = fxgraph_cache_counts()
    return {k: now[k] - before[k] for k in now}


def build_registry_model(name: str) -> tuple[Any, int]:
    """An edge-se registry model (random weights: latency only) and its default resolution."""
    import edge_se

    try:
        spec = edge_se.get_spec(name)
    except (KeyError, ValueError) as exc:
        raise EdgeSeError(str(exc).strip("'\"")) from None
    return edge_se.build_model(name), int(spec.resolution)


def resolve(cfg: TorchBenchConfig, cuda_available: bool) -> tuple[str, tuple[str, ...], tuple[int, ...], str | None]:
    """Device, dtypes and batches actually run, and the one-line note when CUDA was asked for but absent."""
    note = None
    device = cfg.device
    if device not in ("cpu", "cuda"):
        raise EdgeSeError(f"--torch-device {device!r} not valid; valid: cpu, cuda")
    if cfg.without_cuda not in WITHOUT_CUDA:
        raise EdgeSeError(f"--without-cuda {cfg.without_cuda!r} not valid; valid: {', '.join(WITHOUT_CUDA)}")
    bad = [d for d in cfg.dtypes if d not in DTYPES]
    if bad:
        raise EdgeSeError(f"--dtype {bad[0]!r} not valid; valid: {', '.join(DTYPES)}")
    if device == "cuda" and not cuda_available:
        note = "CUDA is not available on this machine: recording the CPU baseline only"
        device = "cpu"
    if device == "cuda":
        return device, cfg.dtypes or DTYPES, cfg.batches or (1, GPU_LARGE_BATCH), note
    if note:  # the CPU baseline only: fp32 (reduced precisions were a GPU request)
        return device, ("fp32",), cfg.batches or (1,), note
    return device, cfg.dtypes or ("fp32",), cfg.batches or (1,), None


def _timer(torch: Any, device: str) -> Callable[[Callable[[], Any]], float]:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(fn: Callable[[], Any]) -> float:
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))  # ms

        return cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    return cpu_time


def time_model(fn: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], cfg: TorchBenchConfig
               ) -> dict[str, Any]:
    """Warm up, then ``repeats`` x (at least ``runs`` and ``min_seconds``, at most ``max_runs``) timed calls."""
    spec = cfg.measure
    for _ in range(spec.warmup):
        timer(fn)
    repeats, seconds = [], []
    for r in range(spec.repeats):
        if r:
            time.sleep(spec.cooldown_s)
        samples: list[float] = []
        while len(samples) < spec.runs or sum(samples) < spec.min_seconds * 1e3:
            samples.append(timer(fn))
            if spec.max_runs and len(samples) >= spec.max_runs:
                break
        repeats.append(samples)
        seconds.append(sum(samples) / 1e3)
    return {**stats.combine_repeats(repeats, seconds=seconds, unstable_pct=spec.unstable_pct),
            "total_seconds": sum(seconds)}


def bench_torch(cfg: TorchBenchConfig, out: Path, *,
                build: Callable[[str], tuple[Any, int]] = build_registry_model) -> list[dict[str, Any]]:
    """Time every (mode, dtype, batch); append and return one record each."""
    import torch

    device, dtypes, batches, note = resolve(cfg, torch.cuda.is_available())
    if note and cfg.without_cuda == "skip":
        return [_skip(cfg, out, torch.__version__)]
    if note:
        print(f"bench-torch: {note}", file=sys.stderr)
    spec = cfg.measure
    if spec.affinity:
        os.sched_setaffinity(0, {int(c) for c in spec.affinity.split(",")})
    torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    base, default_res = build(cfg.model)
    load_ms = (time.perf_counter() - t0) * 1e3
    res = cfg.resolution or default_res
    facts = sysinfo.describe()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    modes = ("eager", "compile") if cfg.compile else ("eager",)
    records = []
    for dtype in dtypes:
        tdtype = _torch_dtype(torch, dtype)
        model = base.to(device=device, dtype=tdtype).eval()
        for mode in modes:
            for batch in batches:
                x = _seeded_input(torch, batch, res, spec.seed, device, tdtype)
                rec: dict[str, Any] = {
                    "schema": record.SCHEMA, "artifact": None, "manifest_sha256": None, "model": cfg.model,
                    "device": device,
                    "transport": "torch", "emulated": False, "dtype": dtype, "batch": batch, "resolution": res,
                    "runtime": {"name": f"torch-{mode}", "version": torch.__version__},
                    "threads": torch.get_num_threads(), "gpu_name": gpu, "cuda_requested_but_absent": note is not None,
                    "measure": spec.to_dict(), "seed": spec.seed, "load_ms": load_ms,
                    **facts, "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                }
                try:
                    with torch.inference_mode():
                        fn_model = torch.compile(model) if mode == "compile" else model
                        timer = _timer(torch, device)
                        out_holder: list[Any] = []
                        # only a compiled mode reads the counters (they live in torch._dynamo)
                        before = fxgraph_cache_counts() if mode == "compile" else None
                        rec["first_inference_ms"] = timer(lambda: out_holder.append(fn_model(x)))  # noqa: B023
                        if before is not None:
                            rec["compile_cache"] = _since(before)
                        y = out_holder[0].float().cpu().contiguous().numpy()
                        rec["output_checksum"] = output_summary([y])["output_checksum"]
                        rec.update(time_model(lambda: fn_model(x), timer, cfg))  # noqa: B023
                    p50 = rec["p50_ms"]
                    rec["throughput_per_s"] = batch * 1e3 / p50 if p50 > 0 else None
                    rec["peak_rss_bytes"] = sysinfo.peak_rss_bytes()
                    if device == "cuda":
                        rec["gpu_peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
                    rec["status"] = "ok"
                except Exception as exc:  # noqa: BLE001 - a mode that does not work is recorded, not fatal
                    rec["status"] = "error"
                    rec["error"] = first_line(exc)
                record.append(out, rec)
                records.append(rec)
                _log(rec)
    return records


def warm_compile(cfg: TorchBenchConfig, *,
                 build: Callable[[str], tuple[Any, int]] = build_registry_model) -> list[dict[str, Any]]:
    """``torch.compile`` every (dtype, batch) of ``cfg`` and make its first call; time nothing else.

    The compiled kernels land in inductor's cache (``TORCHINDUCTOR_CACHE_DIR``), so a later
    :func:`bench_torch` with the same configuration and cache loads them instead of compiling.
    Returns one plain dict per configuration (not a bench record: nothing is measured but the
    first call, in ms, which includes the compilation) with the FX graph cache's hits and misses.
    """
    import torch

    device, dtypes, batches, note = resolve(cfg, torch.cuda.is_available())
    if note:
        raise EdgeSeError(f"--warm-only on {cfg.device}: {note.split(':')[0]}")
    torch.set_num_threads(cfg.measure.threads)
    base, default_res = build(cfg.model)
    res = cfg.resolution or default_res
    out = []
    for dtype in dtypes:
        tdtype = _torch_dtype(torch, dtype)
        model = base.to(device=device, dtype=tdtype).eval()
        for batch in batches:
            x = _seeded_input(torch, batch, res, cfg.measure.seed, device, tdtype)
            rec: dict[str, Any] = {"model": cfg.model, "device": device, "dtype": dtype, "batch": batch,
                                   "resolution": res, "threads": torch.get_num_threads(), "torch": torch.__version__}
            before = fxgraph_cache_counts()
            try:
                with torch.inference_mode():
                    compiled = torch.compile(model)
                    rec["first_call_ms"] = _timer(torch, device)(lambda: compiled(x))  # noqa: B023
                rec["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - the timing run records the same failure as its compile mode
                rec |= {"status": "error", "error": first_line(exc)}
            rec["compile_cache"] = _since(before)
            print(f"bench-torch: warmed {cfg.model} {device} {dtype} batch {batch}: "
                  + (f"first call {rec['first_call_ms'] / 1e3:.1f} s, FX graph cache {rec['compile_cache']}"
                     if rec["status"] == "ok" else rec["error"]), file=sys.stderr)
            out.append(rec)
    return out


def _skip(cfg: TorchBenchConfig, out: Path, torch_version: str) -> dict[str, Any]:
    """The one ``skipped`` record of a cuda request on a machine without CUDA (nothing built or timed)."""
    reason = "CUDA is not available on this machine"
    print(f"bench-torch: {cfg.model} on cuda: skipped: {reason}", file=sys.stderr)
    rec = {"schema": record.SCHEMA, "status": "skipped", "reason": reason, "artifact": None, "model": cfg.model,
           "device": "cuda", "transport": "torch", "emulated": False, "resolution": cfg.resolution,
           "runtime": {"name": "torch", "version": torch_version}, "cuda_requested_but_absent": True,
           "measure": cfg.measure.to_dict(), "seed": cfg.measure.seed, **sysinfo.describe(),
           "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
    record.append(out, rec)
    return rec


def _log(rec: dict[str, Any]) -> None:
    what = f"{rec['model']} {rec['runtime']['name']} {rec['device']} {rec['dtype']} batch {rec['batch']}"
    if rec["status"] == "ok":
        print(f"bench-torch: {what}: {record.latency_summary(record.read_record(rec))}", file=sys.stderr)
    else:
        print(f"bench-torch: {what}: {rec['error']}", file=sys.stderr)

