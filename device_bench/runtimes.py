"""Runtime adapters for the on-device runner: LiteRT/TFLite and ExecuTorch's Python runtime.

Runs on the device: numpy plus whichever runtime is importable; never imports torch itself.
Each adapter loads an artifact with an explicit thread count and runs it on numpy inputs.
The timed region is one inference: ``invoke()`` for TFLite (inputs are set once, before
warm-up), one ``Method.execute`` for ExecuTorch (which copies the inputs in, as every caller of
that API must).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import types
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from contract.files import write_text
from device_bench.manifest import ManifestError, TensorSpec


class RuntimeUnavailable(RuntimeError):
    """No runtime for this artifact format can be imported on this machine."""


class Session(Protocol):
    """A loaded model: ``name``, ``version``, ``threads`` and ``run``."""

    name: str
    version: str
    threads: int

    def set_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        """Bind the inputs used by every following :meth:`run`."""

    def run(self) -> None:
        """Run one inference on the bound inputs."""

    def outputs(self) -> list[np.ndarray]:
        """Copies of the outputs of the last :meth:`run`."""

    def write_op_profile(self, path: str, *, runs: int, warmup: int) -> dict[str, Any]:
        """Run ``warmup`` + ``runs`` profiled inferences on a second load; write the runtime's trace to ``path``.

        Raises:
            RuntimeUnavailable: the runtime has no per-operator profiler reachable from here.
        """


def _version(dist: str, module: Any) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


class TfliteSession:
    """A ``.tflite`` model in ``ai_edge_litert`` (preferred) or ``tflite_runtime``."""

    def __init__(self, path: str, inputs: Sequence[TensorSpec], threads: int) -> None:
        interpreter_cls, self.name, self.version = self._import()
        self.threads = threads
        self._path = path
        self._interp = interpreter_cls(model_path=path, num_threads=threads)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        if len(self._in) != len(inputs):
            raise ManifestError(f"manifest lists {len(inputs)} inputs, the model takes {len(self._in)}")
        for i, (det, spec) in enumerate(zip(self._in, inputs, strict=True)):
            shape = tuple(int(d) for d in det["shape"])
            if shape != spec.shape or np.dtype(det["dtype"]).name != spec.dtype:
                raise ManifestError(
                    f"inputs[{i}]: manifest says {list(spec.shape)} {spec.dtype}, "
                    f"the model takes {list(shape)} {np.dtype(det['dtype']).name}"
                )

    @staticmethod
    def _import() -> tuple[Any, str, str]:
        for mod_name, dist, label in (
            ("ai_edge_litert.interpreter", "ai-edge-litert", "ai_edge_litert"),
            ("tflite_runtime.interpreter", "tflite-runtime", "tflite_runtime"),
        ):
            try:
                mod = importlib.import_module(mod_name)
            except ImportError:
                continue
            return mod.Interpreter, label, _version(dist, mod)
        raise RuntimeUnavailable("no TFLite runtime: install ai-edge-litert or tflite-runtime")

    def set_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        """Copy the inputs into the interpreter's input tensors."""
        for det, arr in zip(self._in, inputs, strict=True):
            self._interp.set_tensor(det["index"], arr)

    def run(self) -> None:
        """One ``invoke()``."""
        self._interp.invoke()

    def outputs(self) -> list[np.ndarray]:
        """Output tensors in the graph's output order (not name order)."""
        return [np.array(self._interp.get_tensor(d["index"])) for d in self._out]

    def write_op_profile(self, path: str, *, runs: int, warmup: int) -> dict[str, Any]:
        """LiteRT's profile of ``runs`` inferences after ``warmup``, written as JSON to ``path``.

        A second load of the model through libLiteRt.so's C API with profiling on
        (:mod:`device_bench.litert_profile`; XNNPACK's default options, one thread); the timed
        interpreter above is untouched.

        Raises:
            RuntimeUnavailable: no LiteRT C API here (tflite-runtime, or another LiteRT version),
                or one of its calls failed (the message names it).
        """
        from device_bench import litert_profile

        try:
            trace = litert_profile.profile(self._path, runs=runs, warmup=warmup)
        except litert_profile.LiteRtProfileError as exc:
            raise RuntimeUnavailable(f"LiteRT profiler: {exc}") from None
        write_text(path, json.dumps({"schema": litert_profile.TRACE_SCHEMA, **trace}))
        return {"source": "litert-profiler", "path": path, "runs": runs, "warmup": warmup,
                "threads": trace["threads"]}


def import_executorch_runtime() -> tuple[Any, Any]:
    """``executorch.runtime`` and its ``portable_lib``, without importing the exporter (``executorch.exir``).

    ``portable_lib`` imports ``executorch.exir._warnings`` for one warning class, and that import
    runs ``executorch/exir/__init__.py``: the whole exporter, torch._dynamo and ExecuTorch's
    edge-operator YAML, 7.3 s of a 2.2 s runtime import on the 2-core CI machine (``-X importtime``),
    paid by every Python ``.pte`` benchmark. ``_warnings.py`` itself needs only ``typing_extensions``:
    it is loaded from its file under its own name, with an empty ``executorch.exir`` in front of it
    only while the runtime imports, and both are removed after, so a later ``import executorch.exir``
    (the exporter, in the same process) loads the real package as if this had not happened. Where
    ExecuTorch's layout differs (no ``_warnings.py``, or ``exir`` already imported), the plain
    import runs.
    """
    def plain() -> tuple[Any, Any]:
        return (importlib.import_module("executorch.runtime"),
                importlib.import_module("executorch.extension.pybindings.portable_lib"))

    if "executorch.extension.pybindings.portable_lib" in sys.modules or "executorch.exir" in sys.modules:
        return plain()
    pkg = importlib.import_module("executorch")
    path = os.path.join(next(iter(pkg.__path__)), "exir", "_warnings.py")
    spec = importlib.util.spec_from_file_location("executorch.exir._warnings", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        return plain()
    warnings_mod = importlib.util.module_from_spec(spec)
    stub = types.ModuleType("executorch.exir")
    stub._warnings = warnings_mod  # type: ignore[attr-defined]
    sys.modules[spec.name] = warnings_mod
    setattr(pkg, "exir", stub)  # noqa: B010 - `import executorch.exir._warnings as w` reads this attribute
    try:
        spec.loader.exec_module(warnings_mod)
        return plain()
    finally:
        sys.modules.pop(spec.name, None)
        if getattr(pkg, "exir", None) is stub:
            delattr(pkg, "exir")


class ExecutorchSession:
    """A ``.pte`` program in ExecuTorch's Python runtime (x86/host only: it needs libtorch)."""

    def __init__(self, path: str, inputs: Sequence[TensorSpec], threads: int) -> None:
        try:
            runtime_mod, portable = import_executorch_runtime()
        except ImportError as exc:
            raise RuntimeUnavailable(
                f"ExecuTorch Python runtime not importable ({exc}); use the native runner (--runner native)"
            ) from None
        self.name = "executorch"
        self.version = _version("executorch", runtime_mod)
        # The Python runtime keeps its own thread pool; torch.set_num_threads does not reach it.
        portable._unsafe_reset_threadpool(threads)
        self.threads = int(portable._threadpool_get_thread_count())
        # Method.execute takes only torch tensors. The runtime itself imported torch (libtorch
        # is its dependency); take that module rather than importing torch in this runner.
        self._torch = sys.modules.get("torch")
        if self._torch is None:
            raise RuntimeUnavailable("ExecuTorch's Python runtime loaded without torch; use --runner native")
        self._path = path
        program = runtime_mod.Runtime.get().load_program(path)
        self._method = program.load_method("forward")
        meta = self._method.metadata
        if meta.num_inputs() != len(inputs):
            raise ManifestError(f"manifest lists {len(inputs)} inputs, the program takes {meta.num_inputs()}")
        for i, spec in enumerate(inputs):
            sizes = tuple(int(d) for d in meta.input_tensor_meta(i).sizes())
            if sizes != spec.shape:
                raise ManifestError(f"inputs[{i}]: manifest says {list(spec.shape)}, the program takes {list(sizes)}")
        self._inputs: list[Any] = []
        self._last: list[Any] = []

    def set_inputs(self, inputs: Sequence[np.ndarray]) -> None:
        """Wrap the numpy inputs (zero-copy) for ``Method.execute``."""
        self._inputs = [self._torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]

    def run(self) -> None:
        """One ``Method.execute``."""
        self._last = self._method.execute(self._inputs)

    def outputs(self) -> list[np.ndarray]:
        """Copies of the last outputs as numpy arrays."""
        return [np.array(t.detach().numpy(), copy=True) for t in self._last]

    def write_op_profile(self, path: str, *, runs: int, warmup: int) -> dict[str, Any]:
        """ETDump of ``warmup`` + ``runs`` inferences of a second, profiling load of the program.

        ``_load_for_executorch(..., enable_etdump=True)`` records ``Method::execute``, each
        ``DELEGATE_CALL`` and, inside the XNNPACK delegate, one event per XNNPACK operator (the
        delegate's own runtime profiling, whole microseconds). Every run is in the file; the
        reader drops the first ``warmup``. The timed session above is untouched.
        """
        portable = importlib.import_module("executorch.extension.pybindings.portable_lib")
        module = portable._load_for_executorch(self._path, enable_etdump=True)
        if not module.has_etdump():
            raise RuntimeUnavailable("this ExecuTorch build records no ETDump (enable_etdump had no effect)")
        for _ in range(warmup + runs):
            module.forward(self._inputs)
        module.write_etdump_result_to_file(path)
        return {"source": "executorch-etdump", "path": path, "runs": runs, "warmup": warmup}


def open_session(fmt: str, path: str, inputs: Sequence[TensorSpec], threads: int) -> Session:
    """Load ``path`` (``fmt`` is the manifest format) with ``threads`` threads."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if fmt == "tflite":
        return TfliteSession(path, inputs, threads)
    if fmt == "pte":
        return ExecutorchSession(path, inputs, threads)
    raise ManifestError(f"format {fmt!r} has no runtime; valid: pte, tflite")
