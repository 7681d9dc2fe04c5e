"""The ``adb://SERIAL`` transport: Android devices, through the user's ``adb``.

Android has no Python: the device side is a native tool the user points edge-se at (inventory
keys, or ``bench --runner``):
    * ``native_runner`` (+ ``native_lib_dir``): edge-se's runner built for Android; prints the
      full result JSON itself (``.pte``);
    * ``tflite_benchmark``: TensorFlow Lite's ``benchmark_model`` (``.tflite``);
    * ``executor_runner``: ExecuTorch's example runner (``.pte``).
The last two print summaries, not samples and not outputs: their lines say so
(``output_checksum: null`` with a note, pooled percentiles ``null`` where the tool printed none).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from contract.bench import SCHEMA as BENCH_SCHEMA
from device_bench import stats, sysinfo
from device_bench.manifest import load_manifest
from device_bench.transports.base import DeviceError, RunOptions, last_error_line, parse_result

_STAT = re.compile(r"(\w+)=([-+0-9.eE]+)")
_FAILURES = (("not found", "device not found (is it connected? see adb devices)"),
             ("offline", "device offline"), ("unauthorized", "device unauthorized (accept the USB debugging prompt)"),
             ("no devices", "no device connected"))


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Parse TFLite ``benchmark_model`` output into one repeat's summary (ms) plus init/first/RSS."""
    stat_lines = [ln for ln in text.splitlines() if "count=" in ln and "avg=" in ln]
    if not stat_lines:
        raise ValueError("no 'count=... avg=...' timing line in benchmark_model output")
    vals = {k: float(v) for k, v in _STAT.findall(stat_lines[-1])}  # the last one is the timed phase
    us = 1e-3
    rep: dict[str, Any] = {"min_ms": vals["min"] * us, "mean_ms": vals["avg"] * us,
                           "std_ms": vals.get("std", 0.0) * us, "samples": int(vals["count"]),
                           "p50_ms": None, "p90_ms": None, "p99_ms": None}
    for key, name in (("median", "p50_ms"), ("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms")):
        if key in vals:
            rep[name] = vals[key] * us
    m = re.search(r"Init:\s*([0-9.]+),\s*First inference:\s*([0-9.]+)", text)
    init = {"load_ms": float(m[1]) * us, "first_inference_ms": float(m[2]) * us} if m else {}
    mem = re.search(r"[Pp]eak memory footprint \(MB\)[^0-9]*?(?:overall=)?([0-9.]+)\s*$", text, re.M) or \
        re.search(r"overall=([0-9.]+)", text)
    return {"repeat": rep, **init, "peak_rss_bytes": int(float(mem[1]) * 2**20) if mem else None}


def parse_executor_runner(text: str) -> dict[str, Any]:
    """Parse ExecuTorch ``executor_runner`` output: total time for N executions (mean only)."""
    m = re.search(r"executed successfully\s+(\d+)\s+time\(s\) in\s+([0-9.]+)\s*ms", text)
    if not m:
        raise ValueError("no 'Model executed successfully N time(s) in X ms' line in executor_runner output")
    n, total = int(m[1]), float(m[2])
    return {"repeat": {"min_ms": None, "mean_ms": total / n, "std_ms": None, "samples": n,
                       "p50_ms": None, "p90_ms": None, "p99_ms": None}}


class AdbTransport:
    """An Android device over adb."""

    kind = "adb"
    emulated = False

    def __init__(self, serial: str, *, name: str | None = None, options: dict[str, Any] | None = None) -> None:
        opts = dict(options or {})
        self.serial = serial
        self.name = name or f"adb://{serial}"
        self.adb_bin = str(opts.get("adb", "adb"))
        self.remote_dir = str(opts.get("remote_dir", "/data/local/tmp/edge-se"))
        keys = ("native_runner", "native_lib_dir", "tflite_benchmark", "executor_runner")
        self.tools = {k: opts.get(k) for k in keys}

    @classmethod
    def from_url(cls, url: str, *, name: str | None = None, options: dict[str, Any] | None = None) -> AdbTransport:
        """Parse ``adb://SERIAL``."""
        serial = url[len("adb://"):].strip("/")
        if not serial or not re.fullmatch(r"[\w.:\-]+", serial):
            raise DeviceError(f"device {url!r}: expected adb://SERIAL (see adb devices)")
        return cls(serial, name=name, options=options)

    def adb(self, *args: str, timeout_s: float, what: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``adb -s SERIAL ARGS``; errors name the device."""
        try:
            proc = subprocess.run([self.adb_bin, "-s", self.serial, *args], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: {what} timed out after {timeout_s:g} s") from None
        except FileNotFoundError:
            raise DeviceError(f"{self.name}: adb ({self.adb_bin}) not found; install Android platform-tools") from None
        if check and proc.returncode != 0:
            low = (proc.stderr + proc.stdout).lower()
            cause = next((msg for key, msg in _FAILURES if f"device '{self.serial}' {key}" in low or key in low
                          and "error:" in low), None)
            cause = cause or f"{what} failed: {last_error_line(proc.stderr or proc.stdout)}"
            raise DeviceError(f"{self.name}: {cause}")
        return proc

    def shell(self, argv: list[str], *, timeout_s: float, what: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one command on the device; every argument is quoted (adb shell joins them with spaces)."""
        return self.adb("shell", shlex.join(argv), timeout_s=timeout_s, what=what, check=check)

    def _tool(self, fmt: str, runner: str) -> tuple[str, Path]:
        order = {"tflite": ["tflite_benchmark"], "pte": ["native_runner", "executor_runner"]}[fmt]
        if runner == "native":
            order = ["native_runner"] if fmt == "pte" else []
        for key in order:
            if self.tools.get(key):
                path = Path(str(self.tools[key])).expanduser()
                if not path.is_file():
                    raise DeviceError(f"{self.name}: {key} {path} not found on this machine")
                return key, path
        raise DeviceError(f"{self.name}: no device tool for .{fmt}; set {' or '.join(order) or 'a tool'} "
                          "in the device inventory")

    def _device_facts(self, t: float) -> dict[str, Any]:
        script = "uname -m; uname -sr; cat /proc/cpuinfo; echo __MODEL__; getprop ro.product.model 2>/dev/null || true"
        out = self.shell(["sh", "-c", script], timeout_s=t, what="uname").stdout
        head, _, model = out.partition("__MODEL__")
        lines = head.splitlines()
        return {"machine": lines[0].strip() if lines else "unknown",
                "kernel": lines[1].strip() if len(lines) > 1 else "",
                "cpu_model": sysinfo.cpu_model("\n".join(lines[2:]), model.strip())}

    def run(self, artifact: Path, manifest: Path, opts: RunOptions) -> dict[str, Any]:
        """Push, verify, run the configured tool, parse, clean up."""
        m = load_manifest(manifest)
        t = opts.timeout_s
        key, tool = self._tool(m.format, opts.runner)
        remote = f"{self.remote_dir}/{uuid.uuid4().hex[:12]}"
        self.shell(["mkdir", "-p", remote], timeout_s=t, what="mkdir")
        try:
            art = f"{remote}/{artifact.name}"
            self.adb("push", str(artifact), art, timeout_s=t, what="push")
            self.adb("push", str(manifest), f"{art}.json", timeout_s=t, what="push")
            exe = f"{remote}/{tool.name}"
            self.adb("push", str(tool), exe, timeout_s=t, what="push")
            if key == "native_runner":
                libs = Path(str(self.tools.get("native_lib_dir") or tool.parent / "lib")).expanduser()
                self.shell(["mkdir", "-p", f"{remote}/lib"], timeout_s=t, what="mkdir")
                for lib in sorted(libs.glob("*.so")):
                    self.adb("push", str(lib), f"{remote}/lib/{lib.name}", timeout_s=t, what="push")
            self.shell(["chmod", "755", exe], timeout_s=t, what="chmod")
            digest = self.shell(["sha256sum", art], timeout_s=t, what="sha256sum").stdout.split()[:1]
            if digest != [m.sha256]:
                raise DeviceError(f"{self.name}: sha256 of {artifact.name} on the device does not match the manifest; "
                                  "the transfer was corrupted")
            if key == "native_runner":
                proc = self.shell(["env", f"LD_LIBRARY_PATH={remote}/lib", exe, art, "--manifest", f"{art}.json",
                                   *opts.argv()], timeout_s=t, what="native runner")
                return parse_result(proc.stdout, self.name)
            return self._run_tool(key, exe, art, opts)
        finally:
            self.shell(["rm", "-rf", remote], timeout_s=min(t, 60), what="clean-up", check=False)

    def _run_tool(self, key: str, exe: str, art: str, opts: RunOptions) -> dict[str, Any]:
        t = opts.timeout_s
        spec = opts.measure  # the tools take runs, warmup, min seconds, threads; not max_runs, affinity, seed
        parsed = []
        for r in range(spec.repeats):
            if r:
                time.sleep(spec.cooldown_s)
            if key == "tflite_benchmark":
                argv = [exe, f"--graph={art}", f"--num_threads={spec.threads}", f"--warmup_runs={spec.warmup}",
                        f"--num_runs={spec.runs}", f"--min_secs={spec.min_seconds:g}", "--use_xnnpack=true"]
                parse = parse_benchmark_model
            else:
                argv = [exe, f"--model_path={art}", f"--num_executions={spec.runs}"]
                parse = parse_executor_runner
            proc = self.shell(argv, timeout_s=t, what=key)
            try:
                parsed.append(parse(proc.stdout + "\n" + proc.stderr))
            except ValueError as exc:
                raise DeviceError(f"{self.name}: {key}: {exc}") from None
        combined = stats.combine_summaries([p["repeat"] for p in parsed], unstable_pct=spec.unstable_pct)
        reps = combined["repeats"]
        return {
            "schema": BENCH_SCHEMA,
            **combined,
            "measure": spec.to_dict(),
            "runner": key,
            "runtime": {"name": "tflite-benchmark_model" if key == "tflite_benchmark" else "executorch-executor_runner",
                        "version": None},
            "threads": spec.threads if key == "tflite_benchmark" else None,
            "total_seconds": sum(r["mean_ms"] * r["samples"] for r in reps) / 1e3,
            "load_ms": parsed[0].get("load_ms"),
            "first_inference_ms": parsed[0].get("first_inference_ms"),
            "peak_rss_bytes": max((p["peak_rss_bytes"] for p in parsed if p.get("peak_rss_bytes")), default=None),
            "output_checksum": None,
            "output_checksum_note": f"{key} does not expose outputs; use native_runner for a checksum",
            **self._device_facts(t),
        }

    def probe(self) -> dict[str, Any]:
        """Reachability (``adb get-state``), architecture and the tools configured."""
        try:
            self.adb("get-state", timeout_s=20, what="get-state")
            facts = self._device_facts(20)
        except DeviceError as exc:
            return {"reachable": False, "error": str(exc)}
        tools = [k for k in ("native_runner", "tflite_benchmark", "executor_runner") if self.tools.get(k)]
        return {"reachable": True, "machine": facts["machine"], "runtimes": tools}
