"""scripts/bench_sweep.py's verdict: ray against local judged by the run-to-run noise (no sweep is run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_sweep  # noqa: E402


def _run(executor: str, p50: dict[str, float], spread: float = 0.1) -> dict:
    return {"executor": executor, "jobs": 2, "exit": 0, "wall_s": 10.0, "cells": 2, "computed": 2, "failed": 0,
            "cells_per_min": 12.0, "p50_ms": p50, "repeat_spread_pct": dict.fromkeys(p50, spread)}


def test_rerun_sets_the_noise_and_a_larger_ray_difference_is_not_within_it(tmp_path):
    runs = [_run("local", {"a": 1.0, "b": 2.0}), _run("ray", {"a": 1.02, "b": 2.5}),
            _run("local", {"a": 0.97, "b": 2.01})]
    rows = {r["cell"]: r for r in bench_sweep.noise_rows(runs)}
    # a: ray +2% while local itself moved -3% between its runs -> within noise; b: ray +25% vs a +0.5% rerun -> not
    assert rows["a"]["diff_pct"] == pytest.approx(2.0) and rows["a"]["rerun_diff_pct"] == pytest.approx(-3.0)
    assert rows["a"]["within_noise"] and not rows["b"]["within_noise"]
    bench_sweep.write(tmp_path / "r", Path("c.toml"), runs)
    md = (tmp_path / "r.md").read_text()
    assert "1 of 2 cells within noise" in md and "local run again last vs its first run: 1.7%" in md


def test_without_a_rerun_only_the_repeat_spreads_count():
    rows = bench_sweep.noise_rows([_run("local", {"a": 1.0}, spread=3.0), _run("ray", {"a": 1.02}, spread=0.5)])
    assert rows[0]["rerun_diff_pct"] is None and rows[0]["within_noise"]  # +2% <= the 3% repeat spread
