"""What every transport shares: run options, the device error, the payload sent to a device.

A transport moves an artifact and its manifest to a device, runs a runner there and returns
the runner's JSON object (plus transport facts). Host side: may import edge_se.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from contract.measure import MeasureSpec
from edge_se.errors import EdgeSeError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: The on-device runner: these modules only (numpy + a runtime; no torch, no edge_se).
CONTRACT_DIR = PACKAGE_DIR.parent / "contract"  # the runner reads manifests through it (stdlib only)
RUNNER_MODULES = ("__init__.py", "runner.py", "stats.py", "manifest.py", "sysinfo.py", "runtimes.py", "gate_score.py")

RunnerKind = Literal["auto", "python", "native"]


class DeviceError(EdgeSeError):
    """A device could not run the benchmark: one line that names the device and the cause."""


@dataclass(frozen=True)
class RunOptions:
    """How to measure (``measure``: :class:`contract.measure.MeasureSpec`) and how to reach the runner.

    Only the transport's own fields live here; every measurement figure and its default is the
    spec's.
    """

    measure: MeasureSpec = MeasureSpec()
    runner: RunnerKind = "auto"
    timeout_s: float = 600.0
    parity: bool = True

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes``: transport fields by name, measurement fields (``runs=3``) into ``measure``."""
        own = {f.name for f in fields(self)} - {"measure"}
        mine = {k: v for k, v in changes.items() if k in own}
        spec = {k: v for k, v in changes.items() if k not in own}
        measure = changes.get("measure", self.measure)
        spec.pop("measure", None)
        return dataclasses.replace(self, **mine, measure=measure.replace(**spec) if spec else measure)

    def argv(self, **override: Any) -> list[str]:
        """Runner command-line options: :meth:`MeasureSpec.to_argv` (``override`` replaces spec fields: ``runs=3``)."""
        return (self.measure.replace(**override) if override else self.measure).to_argv()


class Transport(Protocol):
    """A way to reach one device."""

    name: str
    kind: str
    emulated: bool

    def run(self, artifact: Path, manifest: Path, opts: RunOptions) -> dict[str, Any]:
        """Run one artifact; return the runner's result object."""

    def probe(self) -> dict[str, Any]:
        """Reachability, architecture and the runtimes available."""


def stage_runner(dest: Path) -> Path:
    """Copy the on-device runner into ``dest``: ``device_bench`` (:data:`RUNNER_MODULES`) and ``contract``."""
    pkg = dest / "device_bench"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in RUNNER_MODULES:
        shutil.copy2(PACKAGE_DIR / name, pkg / name)
    contract = dest / "contract"
    contract.mkdir(parents=True, exist_ok=True)
    for f in CONTRACT_DIR.iterdir():
        if f.suffix == ".py" or f.name.endswith(".schema.json"):
            shutil.copy2(f, contract / f.name)
    return dest


def parse_result(stdout: str, device: str) -> dict[str, Any]:
    """The runner's JSON object: the last stdout line that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    tail = stdout.strip().splitlines()[-1:] or ["<no output>"]
    raise DeviceError(f"{device}: the runner printed no result JSON (last line: {tail[0][:200]})")


def last_error_line(stderr: str) -> str:
    """The most useful line of a failing command's stderr (a runner error, else the last line)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error:" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no error output"


def run_checked(
    cmd: Sequence[str], *, device: str, timeout_s: float, what: str, **kw: Any
) -> subprocess.CompletedProcess:
    """Run a host command; a time-out or non-zero exit becomes a one-line :class:`DeviceError`."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, **kw)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{device}: {what} timed out after {timeout_s:g} s") from None
    except FileNotFoundError:
        raise DeviceError(f"{device}: {cmd[0]} not found on this machine") from None
    if proc.returncode != 0:
        raise DeviceError(f"{device}: {what} failed (exit {proc.returncode}): {last_error_line(proc.stderr)}")
    return proc
