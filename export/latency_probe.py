"""``auto``'s latency probe: an int8 graph with fp32 islands against plain int8, as artifacts, side by side.

``--policy auto`` keeps an fp32 island (an SE block, or a tensor taken off the int8 grid) only
within a latency budget (``--latency-budget-pct``, default :data:`quantize.core.AUTO_LATENCY_BUDGET_PCT`
percent over plain int8). This module measures that budget the way the artifact will run: both
quantised graphs lowered by the target's backend (the converter ``edge-se export`` uses), both
loaded in the target's runtime through the on-device runner's own sessions
(:func:`device_bench.runtimes.open_session`), on one thread, timed in alternating rounds (plain,
candidate, candidate, plain, ...) so that a drift of the machine's speed falls on both. The ratio
is the median over rounds of (candidate's median run / plain's median run) (:func:`ratio_of_rounds`).
Plain int8's artifact is lowered once per export and reused for every candidate.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.manifest import TensorSpec
from device_bench.manifest import make_input
from device_bench.runtimes import open_session
from edge_se.errors import EdgeSeError

#: Alternating rounds per comparison, inference runs per artifact per round, warm-up runs per session.
ROUNDS = 7
RUNS_PER_ROUND = 10
WARMUP = 3
#: Threads of both sessions: one, as the peer and latency tables time int8 against fp32.
THREADS = 1


def ratio_of_rounds(plain_ms: Sequence[float], candidate_ms: Sequence[float]) -> float:
    """Median over rounds of ``candidate_ms[r] / plain_ms[r]`` (each the round's median run, ms).

    Raises:
        EdgeSeError: no rounds, rounds of different counts, or a time that is not positive.
    """
    if not plain_ms or len(plain_ms) != len(candidate_ms):
        raise EdgeSeError(f"latency probe: {len(plain_ms)} plain and {len(candidate_ms)} candidate rounds")
    if min(*plain_ms, *candidate_ms) <= 0:
        raise EdgeSeError("latency probe: a round timed <= 0 ms")
    return float(statistics.median(c / p for p, c in zip(plain_ms, candidate_ms, strict=True)))


def round_ms(session: Any, runs: int) -> float:
    """The median of ``runs`` timed runs of a loaded runner session (ms)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def open_timed_session(backend: Any, data: bytes, stem: Path, *, layout: str, threads: int, warmup: int) -> Any:
    """``data`` written to ``stem`` + the format's extension and loaded in the on-device runner's session.

    Its inputs are the runner's seeded inputs for the artifact's own tensor specs; ``warmup`` runs
    are done before it is returned.
    """
    path = stem.with_name(f"{stem.name}.{backend.spec.ext}")
    path.write_bytes(data)
    ins, _ = backend.tensor_specs(data, layout=layout)
    specs = [TensorSpec.from_json(x) for x in ins]
    session = open_session(backend.name, str(path), specs, threads)
    session.set_inputs([make_input(spec, i) for i, spec in enumerate(specs)])
    for _ in range(warmup):
        session.run()
    return session


class ArtifactLatencyProbe:
    """``probe(plain, candidate)`` for :func:`quantize.quantize_model` (``latency_probe=``): a latency ratio.

    Args:
        backend: the target's :mod:`export.backends` backend (lowers and describes the artifacts).
        example: the example inputs the artifact is lowered with (batch 1).
        layout: ``NCHW`` or ``NHWC``, the artifact's input layout.
        rounds, runs, warmup, threads: the timing (see the module docstring).
    """

    def __init__(self, backend: Any, example: tuple[Any, ...], layout: str, *, rounds: int = ROUNDS,
                 runs: int = RUNS_PER_ROUND, warmup: int = WARMUP, threads: int = THREADS) -> None:
        self.backend, self.example, self.layout = backend, example, layout
        self.rounds, self.runs, self.warmup, self.threads = rounds, runs, warmup, threads
        self._plain: tuple[object, bytes] | None = None  # (the plain graph itself, its artifact)
        #: The last comparison: ``plain_ms``, ``candidate_ms`` (medians over rounds), ``rounds``, ``runs``, ``threads``.
        self.last: dict[str, float | int] = {}

    def _lower(self, qm: Any) -> bytes:
        try:
            return bytes(self.backend.lower(qm.graph, self.example, quantized=qm, layout=self.layout).data)
        except Exception as exc:  # noqa: BLE001 - a toolchain failure: say which stage
            raise EdgeSeError(f"auto's latency probe: lowering a candidate to {self.backend.name} failed: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    def _session(self, data: bytes, folder: Path, name: str) -> Any:
        return open_timed_session(self.backend, data, folder / name, layout=self.layout, threads=self.threads,
                                  warmup=self.warmup)

    def __call__(self, plain: Any, candidate: Any) -> float:
        """``candidate``'s artifact latency over ``plain``'s (both ``QuantizedModel``), measured side by side."""
        if self._plain is None or self._plain[0] is not plain.graph:
            self._plain = (plain.graph, self._lower(plain))
        plain_data, cand_data = self._plain[1], self._lower(candidate)
        with tempfile.TemporaryDirectory(prefix="edge-se-probe-") as tmp:
            a = self._session(plain_data, Path(tmp), "plain")
            b = self._session(cand_data, Path(tmp), "candidate")
            plain_ms, cand_ms = [], []
            for r in range(self.rounds):
                if r % 2 == 0:
                    plain_ms.append(round_ms(a, self.runs))
                    cand_ms.append(round_ms(b, self.runs))
                else:
                    cand_ms.append(round_ms(b, self.runs))
                    plain_ms.append(round_ms(a, self.runs))
        ratio = ratio_of_rounds(plain_ms, cand_ms)
        self.last = {"plain_ms": round(statistics.median(plain_ms), 4),
                     "candidate_ms": round(statistics.median(cand_ms), 4),
                     "rounds": self.rounds, "runs": self.runs, "threads": self.threads}
        print(f"latency probe: candidate {ratio:.3f}x plain int8 ({self.last['candidate_ms']:.3f} vs "
              f"{self.last['plain_ms']:.3f} ms, {self.rounds} alternating rounds x {self.runs} runs, "
              f"{self.threads} thread)", file=sys.stderr)
        return ratio
