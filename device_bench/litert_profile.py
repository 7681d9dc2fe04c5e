"""Per-operator profile of a ``.tflite`` in LiteRT, through the C profiler API of the libLiteRt.so the wheel ships.

Runs on the device next to :mod:`device_bench.runner`: the standard library only (``ctypes``; no
numpy, torch or ``edge_se``). LiteRT's Python API has no profiler (ai-edge-litert 2.3.0: the
``Interpreter`` takes none, ``CompiledModel`` exposes none), but the wheel's ``libLiteRt.so``
exports the C API of LiteRT's ``CompiledModel`` with one:

1. runtime options ``enable_profiling = true``: an opaque option with identifier
   ``runtime_options_string`` whose payload is TOML, freed by the library with ``free``;
2. ``LiteRtCreateCompiledModel`` with only the CPU accelerator (XNNPACK, its default options: one
   thread), ``LiteRtCompiledModelGetProfiler``;
3. ``warmup`` unprofiled runs, then ``LiteRtStartProfiler``, ``runs`` timed runs,
   ``LiteRtStopProfiler``;
4. ``LiteRtGetProfileSummary``: TFLite's profile summarizer text. Its ``Run Order`` table lists
   every operator the XNNPACK delegate ran (``Delegate/Convolution (NHWC, F32) IGEMM``, named
   ``[Delegate]:N``, N its index in the delegate's execution order) with its mean time over the
   profiled runs; XNNPACK reports whole microseconds, as it does in ExecuTorch's ETDump.

Inputs are the managed buffers' own contents (no data is written: the runtime's operators take the
same time whatever the values, bar denormals, which fp32 zero-filled buffers avoid). Every
inference's wall time is taken around ``LiteRtRunCompiledModel`` here, with the profiler on, so the
operators and the end-to-end figure come from the same inferences.

:func:`parse_run_order` turns the summary into the operator sequence :mod:`device_bench.op_profile`
reads; :func:`profile` writes nothing, the runner does (:meth:`device_bench.runtimes.TfliteSession.write_op_profile`).
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Schema of the JSON file the runner writes (:meth:`device_bench.runtimes.TfliteSession.write_op_profile`).
TRACE_SCHEMA = "edge-se/litert-trace/1"
#: The opaque-options identifier of LiteRT's runtime options, and the TOML that turns profiling on.
RUNTIME_OPTIONS_ID = b"runtime_options_string"
PROFILING_TOML = b"enable_profiling = true\n"
#: ``kLiteRtHwAcceleratorCpu``: XNNPACK, as the Python interpreter the runner times with.
HW_ACCELERATOR_CPU = 1
#: Bytes reserved for a ``LiteRtRankedTensorType`` the library fills (an opaque struct here).
RANKED_TYPE_BYTES = 1024
#: XNNPACK's default delegate options (``TfLiteXNNPackDelegateOptionsDefault``): one thread.
THREADS = 1
_ROW = re.compile(r"^\s*(?P<type>\S.*?)\s+(?P<start>[-\d.]+)\s+(?P<first>[-\d.]+)\s+(?P<avg>[-\d.]+)\s+"
                  r"(?P<pct>[-\d.]+)%\s+(?P<cdf>[-\d.]+)%\s+(?P<mem>[-\d.]+)\s+(?P<calls>\d+)\s+"
                  r"\[(?P<name>[^\]]*)\]:(?P<index>\d+)\s*$")


class LiteRtProfileError(RuntimeError):
    """The LiteRT library or one of its profiling calls failed; the message names the call."""


def library_path() -> str:
    """The ``libLiteRt.so`` of the installed ai-edge-litert wheel.

    Raises:
        LiteRtProfileError: ai-edge-litert is not installed or ships no ``libLiteRt.so``.
    """
    try:
        import ai_edge_litert
    except ImportError as exc:
        raise LiteRtProfileError(f"ai-edge-litert is not importable ({exc}): no LiteRT C API here") from None
    path = os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so")
    if not os.path.isfile(path):
        raise LiteRtProfileError(f"{path}: not found (this ai-edge-litert ships no LiteRT C API)")
    return path


def parse_run_order(summary: str) -> list[dict[str, Any]]:
    """The operators of a LiteRT profile summary's ``Run Order`` table, in execution order.

    Returns:
        One dict per operator: ``index`` (its ``[...]:N`` number), ``name`` (``[Delegate]`` for
        XNNPACK's operators), ``op_type`` (the node type without its ``Delegate/`` prefix),
        ``delegated``, ``avg_ms`` (mean over the profiled runs), ``calls``; sorted by ``(name,
        index)`` with the delegate's operators in their own execution order.

    Raises:
        LiteRtProfileError: the summary has no ``Run Order`` table or no operator in it.
    """
    lines = summary.splitlines()
    starts = [i for i, line in enumerate(lines) if " Run Order " in line and line.lstrip().startswith("=")]
    if not starts:
        raise LiteRtProfileError("LiteRT profile summary has no 'Run Order' table")
    rows = []
    for line in lines[starts[0] + 2:]:
        if line.lstrip().startswith("=") or not line.strip():
            break
        m = _ROW.match(line)
        if m is None:
            continue
        node_type = m["type"]
        rows.append({"index": int(m["index"]), "name": f"[{m['name']}]", "op_type": node_type.removeprefix("Delegate/"),
                     "delegated": node_type.startswith("Delegate/"), "avg_ms": float(m["avg"]),
                     "calls": int(m["calls"])})
    if not rows:
        raise LiteRtProfileError("LiteRT profile summary's 'Run Order' table lists no operator")
    return sorted(rows, key=lambda r: (r["name"], r["index"]))


class _Api:
    """The few C functions used, with their argument types (pointers as ``c_void_p``)."""

    def __init__(self, path: str) -> None:
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as exc:
            raise LiteRtProfileError(f"{path}: cannot load ({exc})") from None
        self.libc = ctypes.CDLL(None)
        self.libc.strdup.restype = ctypes.c_void_p
        self.libc.strdup.argtypes = [ctypes.c_char_p]
        self.libc.free.argtypes = [ctypes.c_void_p]

    def __call__(self, name: str, *args: Any) -> None:
        try:
            fn = getattr(self.lib, name)
        except AttributeError:
            raise LiteRtProfileError(f"libLiteRt.so has no {name} (another LiteRT version)") from None
        status = fn(*args)
        if status != 0:
            raise LiteRtProfileError(f"{name} returned LiteRT status {status}")

    def void(self, name: str, *args: Any) -> None:
        fn = getattr(self.lib, name, None)
        if fn is not None:
            fn.restype = None
            fn(*args)


P = ctypes.c_void_p
SIZE = ctypes.c_size_t


@contextmanager
def _compiled(api: _Api, path: str) -> Iterator[tuple[P, P, P]]:
    """``(environment, model, compiled model)`` with profiling on, destroyed on exit."""
    env, model, options, compiled = P(), P(), P(), P()
    try:
        api("LiteRtCreateEnvironment", ctypes.c_int(0), None, ctypes.byref(env))
        api.lib.LiteRtCreateModelFromFile.argtypes = [P, ctypes.c_char_p, ctypes.POINTER(P)]
        api("LiteRtCreateModelFromFile", env, os.fsencode(path), ctypes.byref(model))
        api("LiteRtCreateOptions", ctypes.byref(options))
        api("LiteRtSetOptionsHardwareAccelerators", options, ctypes.c_int(HW_ACCELERATOR_CPU))
        payload = api.libc.strdup(PROFILING_TOML)  # the options own it from here and free() it
        opaque = P()
        api.lib.LiteRtCreateOpaqueOptions.argtypes = [ctypes.c_char_p, P, P, ctypes.POINTER(P)]
        api("LiteRtCreateOpaqueOptions", RUNTIME_OPTIONS_ID, payload, ctypes.cast(api.libc.free, P),
            ctypes.byref(opaque))
        api("LiteRtAddOpaqueOptions", options, opaque)
        api("LiteRtCreateCompiledModel", env, model, options, ctypes.byref(compiled))
        yield env, model, compiled
    finally:
        for name, handle in (("LiteRtDestroyCompiledModel", compiled), ("LiteRtDestroyOptions", options),
                             ("LiteRtDestroyModel", model), ("LiteRtDestroyEnvironment", env)):
            if handle.value:
                api.void(name, handle)


def _buffers(api: _Api, env: P, model: P, compiled: P) -> tuple[list[P], list[P]]:
    """Managed input and output buffers of signature 0, as the compiled model requires them."""
    sig = P()
    api("LiteRtGetModelSignature", model, SIZE(0), ctypes.byref(sig))
    out: dict[str, list[P]] = {}
    for kind in ("Input", "Output"):
        count = SIZE()
        api(f"LiteRtGetNumSignature{kind}s", sig, ctypes.byref(count))
        out[kind] = []
        for i in range(count.value):
            tensor, req, buf = P(), P(), P()
            api(f"LiteRtGetSignature{kind}TensorByIndex", sig, SIZE(i), ctypes.byref(tensor))
            ranked = ctypes.create_string_buffer(RANKED_TYPE_BYTES)
            api("LiteRtGetRankedTensorType", tensor, ranked)
            api(f"LiteRtGetCompiledModel{kind}BufferRequirements", compiled, SIZE(0), SIZE(i), ctypes.byref(req))
            api("LiteRtCreateManagedTensorBufferFromRequirements", env, ranked, req, ctypes.byref(buf))
            out[kind].append(buf)
    return out["Input"], out["Output"]


def profile(path: str, *, runs: int, warmup: int) -> dict[str, Any]:
    """Profile ``runs`` inferences of the ``.tflite`` at ``path`` after ``warmup`` (see the module docstring).

    Returns:
        ``summary`` (LiteRT's text), ``end_to_end_ms`` (one wall time per profiled run, ms),
        ``runs``, ``warmup``, ``threads``, ``library``.

    Raises:
        LiteRtProfileError: the library is missing or a call fails (the message names it).
        ValueError: ``runs`` < 1 or ``warmup`` < 0.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")
    lib_path = library_path()
    api = _Api(lib_path)
    with _compiled(api, path) as (env, model, compiled):
        inputs, outputs = _buffers(api, env, model, compiled)
        try:
            ins, outs = (P * len(inputs))(*inputs), (P * len(outputs))(*outputs)

            def run() -> None:
                api("LiteRtRunCompiledModel", compiled, SIZE(0), SIZE(len(inputs)), ins, SIZE(len(outputs)), outs)

            for _ in range(warmup):
                run()
            profiler = P()
            api("LiteRtCompiledModelGetProfiler", compiled, ctypes.byref(profiler))
            if not profiler.value:
                raise LiteRtProfileError("LiteRtCompiledModelGetProfiler gave no profiler (profiling not enabled)")
            api("LiteRtResetProfiler", profiler)
            api("LiteRtStartProfiler", profiler)
            wall = []
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                run()
                wall.append((time.perf_counter_ns() - t0) / 1e6)
            api("LiteRtStopProfiler", profiler)
            text = ctypes.c_void_p()
            api.lib.LiteRtGetProfileSummary.argtypes = [P, P, ctypes.POINTER(P)]
            api("LiteRtGetProfileSummary", profiler, compiled, ctypes.byref(text))
            try:
                summary = ctypes.string_at(text.value).decode("utf-8", "replace") if text.value else ""
            finally:
                if text.value:
                    api.libc.free(text)
        finally:
            for buf in (*inputs, *outputs):
                api.void("LiteRtDestroyTensorBuffer", buf)
    return {"summary": summary, "end_to_end_ms": wall, "runs": runs, "warmup": warmup, "threads": THREADS,
            "library": lib_path}


__all__ = ["TRACE_SCHEMA", "LiteRtProfileError", "library_path", "parse_run_order", "profile"]
