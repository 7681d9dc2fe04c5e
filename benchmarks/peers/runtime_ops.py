"""What the runtime ran for every int8 artifact of the run: its operator sequence, read from a profile.

A latency ratio near 1.00 cannot say whether two artifacts do the same work: on a shared 2-core
machine the paired ratio of two identical artifacts moves by a few percent. The runtime's own
operator list can. After the timings, every built int8 artifact (edge-se's and each peer's) is
profiled once (``edge-se bench --profile``, 1 thread: ExecuTorch's ETDump with XNNPACK's
per-operator profiling, or LiteRT's profiler) and its operator types are kept in execution order
(:func:`device_bench.op_profile.op_sequence`). :mod:`benchmarks.peers.table` then calls a pair a
tie where edge-se's operators are a subsequence of the peer's
(:func:`device_bench.op_profile.extra_ops`): edge-se ran no kernel the peer did not, in the same
order, so a paired ratio a little over 1.00 is not work edge-se does and the peer does not.

Measured (AMD EPYC, AVX2-only, 8 MiB LLC; EfficientNet-B0 int8 ``.tflite``): edge-se's NHWC
artifact ran 189 XNNPACK operators, TensorFlow's converter's 190 (the same sequence plus one
``Static Reshape (NC)`` before the classifier), and the per-type times agreed within 1.6%; the NCHW
artifact ran one more, an input ``Transpose (ND, X8)`` of 0.33 ms (0.9% of 34 ms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.peers.proc import edge_se_cli, run_logged
from device_bench.op_profile import op_sequence, trace_of
from edge_se.errors import EdgeSeError

PROFILE_MEASURE = ["--runs", "20", "--warmup", "5", "--repeats", "1", "--cooldown", "0", "--min-seconds", "0.5",
                   "--threads", "1", "--order", "given"]
"""``edge-se bench`` flags of the profiling run: only the operator list is kept, so one thread and a
short run; the operators XNNPACK chooses do not depend on the thread count."""


def profile_int8(arts: list[dict[str, Any]], out: Path) -> None:
    """Set ``runtime_ops`` (operator types, execution order) or ``runtime_ops_error`` on every built int8 artifact.

    One ``edge-se bench --profile`` run over all of them, writing under ``out / "runtime_ops"``.
    A failed profile is recorded on the artifact and the run goes on.
    """
    todo = []
    for a in arts:
        if a["dtype"] != "int8" or a.get("build_error") is not None:
            continue
        if Path(a["artifact"]).is_file():
            todo.append(a)
        else:  # edge-se bench checks every path first: one missing file would stop the others' profiles
            a["runtime_ops_error"] = f"{a['artifact']}: artifact not found"
    if not todo:
        return
    bench_out = out / "runtime_ops" / "profiles.jsonl"
    bench_out.parent.mkdir(parents=True, exist_ok=True)
    bench_out.unlink(missing_ok=True)  # edge-se bench appends
    rc, _, last = run_logged([edge_se_cli(), "bench", *(a["artifact"] for a in todo), "--device", "local",
                              *PROFILE_MEASURE, "--profile", "--out", str(bench_out)],
                             f"runtime operators of {len(todo)} int8 artifacts")
    records: dict[str, dict[str, Any]] = {}
    if bench_out.exists():
        for line in bench_out.read_text().splitlines():
            r = json.loads(line)
            records[str(Path(r["artifact"]).resolve())] = r
    for a in todo:
        rec = records.get(str(Path(a["artifact"]).resolve()))
        if rec is None or rec.get("status") != "ok":
            a["runtime_ops_error"] = (rec or {}).get("error") or f"edge-se bench --profile exit {rc}: {last}"
            continue
        try:
            a["runtime_ops"] = list(op_sequence(trace_of(rec)))
        except EdgeSeError as exc:
            a["runtime_ops_error"] = str(exc)
