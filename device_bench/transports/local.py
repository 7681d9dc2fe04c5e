"""The ``local`` transport: this machine, the runner in a fresh subprocess per artifact.

A subprocess per run keeps peak RSS and thread pools per artifact and lets a crashing runtime
fail one run, not the whole command.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_bench.transports.base import PACKAGE_DIR, DeviceError, RunOptions, parse_result, run_checked


def python_runtimes() -> list[str]:
    """Runtimes the local Python can import (without importing them)."""
    found = []
    for mod, label in (("ai_edge_litert", "ai_edge_litert"), ("tflite_runtime", "tflite_runtime"),
                       ("executorch", "executorch")):
        if importlib.util.find_spec(mod) is not None:
            found.append(label)
    return found


def choose_runner(fmt: str, requested: str, python_has_executorch: bool) -> str:
    """``python`` or ``native`` for a format; ``auto`` prefers Python, native for .pte without it."""
    if requested not in ("auto", "python", "native"):
        raise DeviceError(f"runner {requested!r} not valid; valid: auto, python, native")
    if fmt == "tflite":
        if requested == "native":
            raise DeviceError("the native runner runs .pte only; use the Python runner for .tflite")
        return "python"
    if requested == "auto":
        return "python" if python_has_executorch else "native"
    return requested


class LocalTransport:
    """Run on this machine."""

    kind = "local"
    emulated = False

    def __init__(self, name: str = "local", *, python: str | None = None) -> None:
        self.name = name
        self.python = python or sys.executable

    def command(self, artifact: Path, manifest: Path, opts: RunOptions, fmt: str, **override: Any) -> list[str]:
        """The runner command line for one artifact."""
        kind = choose_runner(fmt, opts.runner, "executorch" in python_runtimes())
        if kind == "native":
            from device_bench.native_build import BuildError, build

            try:
                binary = build("host")
            except BuildError as exc:
                raise DeviceError(f"{self.name}: {exc}") from None
            base = [str(binary)]
        else:
            base = [self.python, "-m", "device_bench.runner"]
        return [*base, str(artifact), "--manifest", str(manifest), *opts.argv(**override)]

    def run(self, artifact: Path, manifest: Path, opts: RunOptions, *, fmt: str = "",
            dump_outputs: Path | None = None, etdump: Path | None = None, input_files: Sequence[Path] = (),
            **override: Any) -> dict[str, Any]:
        """Run one artifact here; ``override`` replaces run options (e.g. ``runs=1``).

        ``etdump``: also write the runtime's per-operator trace of profiled inferences there (``.pte``:
        an ETDump, either runner; ``.tflite``: LiteRT's profile as JSON, the Python runner).
        ``input_files``: one raw little-endian file per input tensor instead of the seeded inputs.
        """
        fmt = fmt or ("tflite" if artifact.suffix == ".tflite" else "pte")
        cmd = self.command(artifact, manifest, opts, fmt, **override)
        for f in input_files:
            cmd += ["--input-file", str(f)]
        if dump_outputs is not None:
            cmd += ["--dump-outputs", str(dump_outputs)]
        if etdump is not None:
            etdump.parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--etdump", str(etdump)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
        proc = run_checked(cmd, device=self.name, timeout_s=opts.timeout_s, what="runner", env=env)
        return parse_result(proc.stdout, self.name)

    def probe(self) -> dict[str, Any]:
        """This machine is always reachable; report its architecture and runtimes."""
        return {"reachable": True, "machine": platform.machine(), "runtimes": python_runtimes() + ["executorch-native"]}
