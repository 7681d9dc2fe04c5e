"""Run a sweep: every cell in dependency order, cached, resumable, failures recorded and skipped past.

A cell whose cache key already has a result is skipped; a cell whose dependency failed is marked
``blocked`` (not run, nothing written); a failing cell records its error under ``failed/`` and the
run goes on. The exit status is non-zero when any cell failed, so CI notices.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cells import Cell, plan_cells
from pipeline.config import RunConfig, load_config
from pipeline.stages import Dep, StageError, key_inputs, run_cell, tool_versions
from pipeline.store import Store, cache_key


@dataclass
class RunSummary:
    """What a sweep did: cell id -> status (``done``, ``cached``, ``failed``, ``blocked``)."""

    run_dir: Path
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Cells with ``status``."""
        return sum(1 for s in self.status.values() if s == status)

    @property
    def ok(self) -> bool:
        """No cell failed or was blocked."""
        return not (self.count("failed") or self.count("blocked"))


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True, disable=None)
    except ImportError:  # pragma: no cover - tqdm is pinned, but the sweep must not need it
        return None


def run_sweep(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    runner: Callable[[Cell, RunConfig, dict[str, Dep], Path], dict[str, Any]] = run_cell,
    only: Callable[[Cell], bool] | None = None,
) -> RunSummary:
    """Run every cell of ``cfg`` into ``run_dir`` (created; an existing one is resumed).

    Args:
        cfg: the parsed config.
        run_dir: the run directory (cache, index, report inputs).
        runner: computes one cell (tests substitute a counting or failing one).
        only: optional filter; cells it rejects are left as they are.
    """
    store = Store(run_dir)
    if Path(cfg.path).is_file():
        shutil.copyfile(cfg.path, store.root / "config.toml")
    cells = [c for c in plan_cells(cfg) if only is None or only(c)]
    versions = tool_versions()
    summary = RunSummary(run_dir=store.root)
    finished: dict[str, Dep] = {}
    keys: dict[str, str] = {}
    index: dict[str, Any] = {"config": cfg.path, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cells": {}}
    bar = _progress(len(cells))
    t_start = time.perf_counter()
    try:
        for cell in cells:
            if bar is not None:
                bar.set_description(cell.id[:60])
            entry: dict[str, Any] = {"stage": cell.stage, "model": cell.model, "params": dict(cell.params)}
            missing = [d for d in cell.deps if d not in finished]
            if missing:
                summary.status[cell.id] = "blocked"
                entry |= {"status": "blocked", "error": f"dependency {missing[0]} did not finish"}
                summary.errors[cell.id] = entry["error"]
            else:
                deps = {d: finished[d] for d in cell.deps}
                key = cache_key(key_inputs(cell, cfg, deps, versions))
                keys[cell.id] = key
                entry["key"] = key
                cached = store.result(cell.stage, key)
                if cached is not None:
                    summary.status[cell.id] = "cached"
                    entry |= {"status": "cached", "seconds": cached.get("seconds")}
                    finished[cell.id] = Dep(store.cell_dir(cell.stage, key), cached)
                else:
                    entry |= _compute(store, cell, cfg, deps, key, runner, summary, finished)
            index["cells"][cell.id] = entry
            index["seconds"] = round(time.perf_counter() - t_start, 1)
            store.write_index(index)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - t_start
    index["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    index["seconds"] = round(summary.seconds, 1)
    store.write_index(index)
    return summary


def _compute(
    store: Store,
    cell: Cell,
    cfg: RunConfig,
    deps: dict[str, Dep],
    key: str,
    runner: Callable[[Cell, RunConfig, dict[str, Dep], Path], dict[str, Any]],
    summary: RunSummary,
    finished: dict[str, Dep],
) -> dict[str, Any]:
    tmp = store.begin(cell.stage)
    try:
        result = runner(cell, cfg, deps, tmp)
    except (StageError, OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        store.fail(cell.stage, key, tmp, {"cell": cell.id, "error": message})
        summary.status[cell.id] = "failed"
        summary.errors[cell.id] = message
        print(f"edge-se run: {cell.id}: failed: {message}", file=sys.stderr)
        return {"status": "failed", "error": message}
    except BaseException:
        # Interrupted (Ctrl-C, kill): drop the partial cell; finished cells stay cached for the resume.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result["key"] = key
    final = store.commit(cell.stage, key, tmp, result)
    finished[cell.id] = Dep(final, result)
    summary.status[cell.id] = "done"
    return {"status": "done", "seconds": result.get("seconds")}


def run_config_file(path: str | Path, run_dir: str | Path) -> RunSummary:
    """Load ``path`` and run it into ``run_dir``."""
    return run_sweep(load_config(path), run_dir)
