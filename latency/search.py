"""Search compound scaling for the largest network under a latency budget: predict, then measure (pure).

The grid is real-valued phi x resolution (x optional width/depth factors around the compound
rule). Every point is predicted (:meth:`latency.table.LatencyTable.predict`, no network built);
the largest by MACs predicted under the budget are then measured, ``top`` at a time. After each
round the predictions are corrected by the median measured/predicted ratio so far, and the
search goes on while a larger candidate is still predicted under the budget and rounds remain.
The choice is the largest *measured* under the budget: a prediction alone never decides.

``predict`` and ``measure`` are parameters, so the search runs on a synthetic latency model in the
tests exactly as on a device.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_se.accounting import count
from edge_se.errors import EdgeSeError
from edge_se.specs import ArchSpec

Variant = Callable[[float, int, float, float], ArchSpec]
"""``(phi, resolution, width factor, depth factor) -> spec``."""


@dataclass
class Candidate:
    """One grid point: the network, its size, and its predicted (and, once timed, measured) cost."""

    spec: ArchSpec
    phi: float
    resolution: int
    width: float
    depth: float
    macs: int
    params: int
    predicted_ms: float
    measured_ms: float | None = None
    round: int | None = None

    @property
    def name(self) -> str:
        """The network's name (``efficientnet_phi1.25``; ``_w.._d..`` off the compound rule)."""
        return self.spec.name

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``edge-se scale --json`` (``chosen`` and each of ``candidates``)."""
        return {"name": self.name, "phi": self.phi, "resolution": self.resolution, "width": self.width,
                "depth": self.depth, "width_multiplier": self.spec.width, "depth_multiplier": self.spec.depth,
                "macs": self.macs, "params": self.params, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms, "round": self.round}


@dataclass
class SearchResult:
    """The choice, every measured candidate, and the whole predicted grid (for the Pareto plot)."""

    budget_ms: float
    chosen: Candidate | None
    measured: list[Candidate]
    grid: list[Candidate] = field(repr=False)
    rounds: int = 0
    correction: float = 1.0


def frange(start: float, stop: float, step: float) -> list[float]:
    """``start, start+step, ... <= stop`` (rounded to 6 decimals, so 0.1 steps stay exact)."""
    if step <= 0:
        raise EdgeSeError(f"bad range step {step!r}: need > 0")
    n = int((stop - start) / step + 1e-9)
    return [round(start + i * step, 6) for i in range(n + 1)]


def make_grid(variant: Variant, predict: Callable[[ArchSpec, int], float], *, phis: Sequence[float],
              resolutions: Sequence[int], factors: Sequence[float] = (1.0,)) -> list[Candidate]:
    """Every distinct network of the grid with its MACs, parameters and predicted cost.

    Two points that round to the same network (channels and repeats are rounded) are one
    candidate: the one with the smaller phi is kept.
    """
    seen: dict[tuple[Any, ...], Candidate] = {}
    for phi in phis:
        for res in resolutions:
            for w in factors:
                for d in factors:
                    spec = variant(phi, res, w, d)
                    key = (spec.stem_channels, spec.stages, spec.head_channels, res)
                    if key in seen:
                        continue
                    acc = count(spec, res)
                    seen[key] = Candidate(spec, phi, res, w, d, acc.macs, acc.params, predict(spec, res))
    return list(seen.values())


def check_budget(budget_ms: float) -> float:
    """``budget_ms`` if it is a number > 0 (ms), else a one-line error naming ``--budget-ms``."""
    if not budget_ms > 0:
        raise EdgeSeError(f"--budget-ms must be > 0, got {budget_ms!r}")
    return budget_ms


def search(grid: Sequence[Candidate], measure: Callable[[list[Candidate]], list[float]], budget_ms: float, *,
           top: int = 3, max_rounds: int = 3) -> SearchResult:
    """Measure the largest candidates predicted under ``budget_ms`` until the largest measured under it is found.

    Args:
        grid: predicted candidates (:func:`make_grid`).
        measure: times a list of candidates, returning their measured ms in order.
        budget_ms: the latency budget (> 0).
        top: candidates measured per round.
        max_rounds: rounds of measurement at most.

    Raises:
        EdgeSeError: a budget or option out of range.
    """
    check_budget(budget_ms)
    if top < 1 or max_rounds < 1:
        raise EdgeSeError(f"--top and --rounds must be >= 1, got {top} and {max_rounds}")
    order = sorted(grid, key=lambda c: (-c.macs, c.predicted_ms))
    measured: list[Candidate] = []
    correction = 1.0
    chosen: Candidate | None = None
    rounds = 0
    while rounds < max_rounds:
        floor = chosen.macs if chosen is not None else -1
        pick = [c for c in order if c.measured_ms is None and c.macs > floor
                and c.predicted_ms * correction <= budget_ms][:top]
        if not pick:
            break
        rounds += 1
        for c, ms in zip(pick, measure(pick), strict=True):
            c.measured_ms, c.round = float(ms), rounds
        measured += pick
        correction = statistics.median(c.measured_ms / c.predicted_ms for c in measured  # type: ignore[operator]
                                       if c.predicted_ms > 0)
        under = [c for c in measured if c.measured_ms is not None and c.measured_ms <= budget_ms]
        chosen = max(under, key=lambda c: c.macs) if under else None
    return SearchResult(budget_ms, chosen, measured, list(grid), rounds, correction)


__all__ = ["Candidate", "SearchResult", "Variant", "check_budget", "frange", "make_grid", "search"]
