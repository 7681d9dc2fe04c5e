"""The ``qemu-aarch64`` transport: user-mode emulated aarch64 (Neoverse-N1), built by ``make arm-emu``.

Three measurements per artifact:
    1. the normal benchmark under emulation; its wall time is kept but labelled emulated
       (40x-450x native: it says nothing about a real device);
    2. instructions executed per inference, counted by the TCG plugin as
       ``(count(n0 + k runs) - count(n0 runs)) / k`` so loading and start-up cancel out, with one
       thread so spinning worker threads add no noise (``.tflite``: the same difference of two spans
       of runs between marks in one process, :meth:`QemuTransport._marked_count`);
    3. parity: the first inference's outputs against the same runner on this host
       (:mod:`device_bench.parity`: int8 within one output step, else judged again on the
       artifact's golden inputs against the int8 error itself; fp32 within
       :data:`device_bench.parity.FP32_ATOL`).
``.tflite`` runs in the aarch64 Python runner; ``.pte`` in the cross-compiled native runner.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from contract.measure import MeasureSpec
from device_bench import emu, parity
from device_bench.manifest import Manifest, load_golden, load_manifest
from device_bench.transports.base import DeviceError, RunOptions, parse_result, run_checked, stage_runner
from device_bench.transports.local import LocalTransport

#: Runs in the shorter of the two counted processes, and how many more a pilot count does.
COUNT_BASE_RUNS = 2
COUNT_EXTRA_RUNS = 8
#: The two counted processes must differ by at least this many instructions, per format (runner).
#: Counting runs use the runners' ``--count-only`` mode (no clock reads, no statistics); what still
#: varies between two such processes is their start-up: about 1e4 instructions for the native
#: runner (``.pte``), up to about 1e5 for the Python runner (``.tflite``; seen: 9.7e4 in a CI
#: checkout, which moved a count over 1e8 by 1.03e-3). 4e7 and 4e8 keep both under 2.5e-4 of the
#: figure. The native floor is the lower one because small probes need ``floor / per`` inferences
#: to reach it: a 2.6e6-instruction latency probe ran 150 of them at 4e8 (a 2026-12-06 emulated table: 129
#: artifacts at about one a minute).
COUNT_MIN_DELTA = {"pte": 4e7, "tflite": 4e8}
#: The Python runner (``.tflite``) counts in one process instead (``--count-marks``): the plugin
#: records the count at a mark before, between and after two spans of runs, so start-up is outside
#: both spans and the mark's own cost is in each; with garbage collection off the spans differ
#: only by their runs (so the figure leaves out the collector's share, which the two-process count
#: holds: 73-150 instructions per inference seen). Saves two or three aarch64 Python start-ups per
#: artifact (10-13 s each under emulation here). The floor of the span difference, as above, for
#: what noise is left.
COUNT_MARKED_MIN_DELTA = 4e6
#: Inferences before the first mark: CPython 3.11 specialises its bytecode as it runs, so the first
#: calls of an inference take more instructions than later ones; the two-process count's long span
#: hides that, a span of a few runs does not.
COUNT_MARKED_WARMUP = 10
#: One inference, no warm-up: the runs whose outputs parity compares.
_ONCE: dict[str, Any] = {"warmup": 0, "runs": 1, "max_runs": 1, "min_seconds": 0.0, "repeats": 1, "cooldown_s": 0.0}


class QemuTransport:
    """Emulated aarch64 on this machine."""

    kind = "qemu-aarch64"
    emulated = True

    def __init__(self, name: str = "qemu-aarch64", *, base: Path | None = None, count: bool = True) -> None:
        self.name = name
        self.base = base
        self.count = count

    def _command(self, env: emu.EmuEnv, fmt: str, artifact: Path, manifest: Path, args: list[str],
                 count_to: Path | None = None) -> list[str]:
        if fmt == "pte":
            prog = [str(env.native_runner)]
        else:
            prog = [str(env.python), "-m", "device_bench.runner"]
        return [*env.prefix(count_to=count_to), *prog, str(artifact), "--manifest", str(manifest), *args]

    def _exec(self, env: emu.EmuEnv, cmd: list[str], stage: Path, opts: RunOptions, what: str) -> dict[str, Any]:
        proc = run_checked(cmd, device=self.name, timeout_s=opts.timeout_s, what=what, env=env.env(str(stage)))
        return parse_result(proc.stdout, self.name)

    def instructions_per_inference(self, env: emu.EmuEnv, fmt: str, artifact: Path, manifest: Path,
                                   opts: RunOptions, stage: Path) -> dict[str, Any]:
        """Count instructions for two run lengths; return the per-inference figure and its inputs.

        A pilot pair (``n0``, ``n0 + 8``) estimates the figure; when its difference is under
        :data:`COUNT_MIN_DELTA` for ``fmt`` (a small model), a third process runs enough inferences to reach it.
        """

        def count(n: int) -> int:
            out = stage / f"count-{n}.txt"
            args = [*opts.argv(warmup=0, runs=n, max_runs=n, min_seconds=0.0, repeats=1, cooldown_s=0.0, threads=1),
                    "--count-only"]
            self._exec(env, self._command(env, fmt, artifact, manifest, args, count_to=out), stage, opts,
                       "instruction count")
            return self._plugin_counts(out)[0]

        if fmt == "tflite":
            marked = self._marked_count(env, fmt, artifact, manifest, opts, stage)
            if marked is not None:
                return marked
        runs = [COUNT_BASE_RUNS, COUNT_BASE_RUNS + COUNT_EXTRA_RUNS]
        counts = [count(n) for n in runs]
        per = (counts[1] - counts[0]) / COUNT_EXTRA_RUNS
        if per <= 0:
            raise DeviceError(f"{self.name}: instruction counts {counts} do not grow with the run count")
        floor = COUNT_MIN_DELTA[fmt]
        if counts[1] - counts[0] < floor:
            extra = math.ceil(floor / per)
            runs[1] = COUNT_BASE_RUNS + extra
            counts[1] = count(runs[1])
            per = (counts[1] - counts[0]) / extra
        return {"instructions_per_inference": per,
                "instruction_count": {"runs": list(runs), "counts": counts, "threads": 1, "qemu_cpu": emu.QEMU_CPU,
                                      "aslr_disabled": bool(emu.no_aslr_prefix()),
                                      "method": "(count(n1) - count(n0)) / (n1 - n0)"}}

    def _plugin_counts(self, out: Path) -> list[int]:
        """What the counting plugin wrote: the process's total, then the count at each mark."""
        try:
            values = [int(v) for v in out.read_text().split()]
        except (OSError, ValueError):
            values = []
        if not values:
            raise DeviceError(f"{self.name}: the instruction-count plugin wrote no count to {out}")
        return values

    def _marked_count(self, env: emu.EmuEnv, fmt: str, artifact: Path, manifest: Path, opts: RunOptions,
                      stage: Path) -> dict[str, Any] | None:
        """Instructions per inference from marks in one process: ``((m3 - m2) - (m2 - m1)) / (n1 - n0)``.

        ``n0`` runs between the first two marks, ``n1`` between the last two; a second process with a
        larger ``n1`` where the pilot's span difference is under :data:`COUNT_MARKED_MIN_DELTA`.
        None where the plugin records no marks (one built before them): the caller counts two processes.
        """
        n0 = COUNT_BASE_RUNS

        def spans(n1: int) -> tuple[list[int], int] | None:
            out = stage / f"count-marked-{n1}.txt"
            args = [*opts.argv(warmup=COUNT_MARKED_WARMUP, runs=n1, max_runs=n1, min_seconds=0.0, repeats=1,
                               cooldown_s=0.0, threads=1), "--count-only", "--count-marks", str(n0)]
            self._exec(env, self._command(env, fmt, artifact, manifest, args, count_to=out), stage, opts,
                       "instruction count")
            values = self._plugin_counts(out)
            if len(values) != 4:
                return None
            m1, m2, m3 = values[1:]
            return [m2 - m1, m3 - m2], m3 - m2 - (m2 - m1)

        n1 = COUNT_BASE_RUNS + COUNT_EXTRA_RUNS
        got = spans(n1)
        if got is None:
            return None
        span, delta = got
        if delta <= 0:
            raise DeviceError(f"{self.name}: marked instruction counts {span} do not grow with the run count")
        if delta < COUNT_MARKED_MIN_DELTA:
            n1 = n0 + math.ceil(COUNT_MARKED_MIN_DELTA / (delta / (n1 - n0)))
            got = spans(n1)
            if got is None:
                return None
            span, delta = got
        return {"instructions_per_inference": delta / (n1 - n0),
                "instruction_count": {"runs": [n0, n1], "counts": span, "threads": 1, "qemu_cpu": emu.QEMU_CPU,
                                      "aslr_disabled": bool(emu.no_aslr_prefix()),
                                      "method": "(span(n1) - span(n0)) / (n1 - n0), spans between marks "
                                                "in one process"}}

    def run(self, artifact: Path, manifest: Path, opts: RunOptions) -> dict[str, Any]:
        """Benchmark, count instructions and check parity with the host."""
        fmt = load_manifest(manifest).format
        env = emu.find(self.base, need=("python",) + (("native_runner",) if fmt == "pte" else ())
                       + (("plugin",) if self.count else ()))
        with tempfile.TemporaryDirectory(prefix="edge-se-qemu-") as tmp:
            stage = stage_runner(Path(tmp))
            dump = stage / "arm-outputs.bin"
            cmd = self._command(env, fmt, artifact, manifest, [*opts.argv(), "--dump-outputs", str(dump)])
            result = self._exec(env, cmd, stage, opts, "emulated runner")
            result["latency_note"] = "emulated wall time (QEMU TCG user mode): not a device figure"
            result["qemu_cpu"] = emu.QEMU_CPU
            if self.count:
                result.update(self.instructions_per_inference(env, fmt, artifact, manifest, opts, stage))
            if opts.parity:
                result["parity"] = self._parity(env, artifact, manifest, opts, fmt, dump, result, stage)
        return result

    def _parity(self, env: emu.EmuEnv, artifact: Path, manifest: Path, opts: RunOptions, fmt: str, dump: Path,
                arm: dict[str, Any], stage: Path) -> dict[str, Any]:
        host_dump = stage / "host-outputs.bin"
        host_opts = RunOptions(MeasureSpec(seed=opts.measure.seed), runner="native" if fmt == "pte" else "python",
                               timeout_s=opts.timeout_s)
        host = LocalTransport("local").run(artifact, manifest, host_opts, fmt=fmt, dump_outputs=host_dump, **_ONCE)
        doc = load_manifest(manifest)
        res = parity.compare(parity.decode(host_dump.read_bytes(), host["outputs"]),
                             parity.decode(dump.read_bytes(), arm["outputs"]), dtype=doc.dtype,
                             scales=[o.scale for o in doc.outputs])
        res["reference"] = f"local {host['machine']} {host['runtime']['name']} {host['runtime']['version']}"
        res["reference_checksum"] = host["output_checksum"]
        if not res["passed"] and doc.dtype == "int8" and (doc.get("parity") or {}).get("golden"):
            golden = self._golden(env, doc, artifact, manifest, opts, fmt, stage, host_opts)
            res["golden"] = golden
            res["passed"] = golden["passed"]
            res["rule"] = f"{res['rule']}; failing that, {golden['rule']}"
        return res

    def _golden(self, env: emu.EmuEnv, doc: Manifest, artifact: Path, manifest: Path, opts: RunOptions, fmt: str,
                stage: Path, host_opts: RunOptions) -> dict[str, Any]:
        """Run host and device on each of the artifact's golden inputs; :func:`parity.golden_compare` on the logits."""
        data = load_golden(artifact, doc)
        if len(doc.inputs) != 1:
            raise DeviceError(f"{artifact}: golden parity needs a one-input artifact, it has {len(doc.inputs)}")
        spec = doc.inputs[0]
        scale, zero = doc.output_quant[0]

        def logits(raw: bytes, outputs: list[dict[str, Any]]) -> np.ndarray:
            y = parity.decode(raw, outputs)[0].astype(np.float64)
            integer = np.issubdtype(np.dtype(outputs[0]["dtype"]), np.integer)
            return (y - (zero or 0)) * scale if integer and scale else y

        host_out, dev_out = [], []
        for i, x in enumerate(data["inputs"]):
            raw = stage / f"golden-{i}.bin"
            raw.write_bytes(np.ascontiguousarray(x, dtype=np.dtype(spec.dtype).newbyteorder("<")).tobytes())
            h_dump, d_dump = stage / f"golden-host-{i}.bin", stage / f"golden-arm-{i}.bin"
            h = LocalTransport("local").run(artifact, manifest, host_opts, fmt=fmt, dump_outputs=h_dump,
                                            input_files=[raw], **_ONCE)
            cmd = self._command(env, fmt, artifact, manifest,
                                [*opts.argv(**_ONCE), "--input-file", str(raw), "--dump-outputs", str(d_dump)])
            d = self._exec(env, cmd, stage, opts, "emulated runner (golden input)")
            host_out.append(logits(h_dump.read_bytes(), h["outputs"]))
            dev_out.append(logits(d_dump.read_bytes(), d["outputs"]))
        return parity.golden_compare(host_out, dev_out, list(data["float_reference"]))

    def probe(self) -> dict[str, Any]:
        """Whether the environment is built and which runtimes it has."""
        try:
            env = emu.find(self.base, need=("python",))
        except DeviceError as exc:
            return {"reachable": False, "error": str(exc)}
        runtimes = ["ai_edge_litert"] if (env.site / "ai_edge_litert").exists() else []
        if env.native_runner.exists():
            runtimes.append("executorch-native")
        return {"reachable": True, "machine": "aarch64", "cpu": emu.QEMU_CPU, "runtimes": runtimes,
                "instruction_counting": env.plugin.exists()}
