"""Run a sweep: every cell in dependency order, cached, resumable, failures recorded and skipped past.

Cells run on an executor (:mod:`pipeline.executors`: serial, a local pool, or Ray); the index is
the same whatever order they finish in (``cells`` in plan order, each with its start and end).

A cell whose cache key already has a result is skipped; a cell whose dependency failed is marked
``blocked`` (not run, nothing written); a failing cell records its error under ``failed/`` and the
run goes on. The exit status is non-zero when any cell failed, so CI notices.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cells import Cell, plan_cells
from pipeline.config import RunConfig, load_config
from pipeline.executors import Job, Outcome, Runner, device_lock, exclusive, make_executor
from pipeline.stages import Dep, key_inputs, run_cell, tool_versions
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
    runner: Runner = run_cell,
    only: Callable[[Cell], bool] | None = None,
    executor: str | None = None,
    address: str | None = None,
    jobs: int | None = None,
) -> RunSummary:
    """Run every cell of ``cfg`` into ``run_dir`` (created; an existing one is resumed).

    A cell starts once its dependencies are done, on the executor's next free slot; cells on one
    timed device never overlap (an emulated device counts instructions: its cells may), and a
    timing cell on a device that times on this host (``local``) runs alone, once no other cell is
    running or could start, and nothing starts until it is done.

    Args:
        cfg: the parsed config.
        run_dir: the run directory (cache, index, report inputs).
        runner: computes one cell (tests substitute a counting or failing one).
        only: optional filter; cells it rejects are left as they are.
        executor: ``local`` or ``ray`` (default ``[run].executor``).
        address: the Ray cluster (default ``[run].address``; None: a local head).
        jobs: cells at once (default ``[run].jobs``, else the usable cores; 1: serial).
    """
    store = Store(run_dir)
    if Path(cfg.path).is_file():
        shutil.copyfile(cfg.path, store.root / "config.toml")
    cells = [c for c in plan_cells(cfg) if only is None or only(c)]
    versions = tool_versions()
    summary = RunSummary(run_dir=store.root)
    ex = make_executor(
        executor or cfg.executor,
        store.root,
        cfg,
        runner,
        address=address if address is not None else cfg.address,
        jobs=jobs if jobs is not None else cfg.jobs,
    )
    finished: dict[str, Dep] = {}
    entries: dict[str, dict[str, Any]] = {}
    index: dict[str, Any] = {
        "config": cfg.path,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "executor": {"name": ex.name, "jobs": ex.slots},
        "timing": "exclusive",  # every timing cell on a host-timed device ran with no other cell running
        "cells": {},
    }
    pending = list(cells)  # plan order: dependencies before dependants
    running: dict[str, Job] = {}
    busy: set[str] = set()  # devices timing a cell now
    alone = False  # an exclusive timing cell is running
    bar = _progress(len(cells))
    t_start = time.perf_counter()

    def record(cell: Cell, entry: dict[str, Any]) -> None:
        entries[cell.id] = entry
        index["cells"] = {c.id: entries[c.id] for c in cells if c.id in entries}  # plan order
        index["seconds"] = round(time.perf_counter() - t_start, 1)
        store.write_index(index)
        if bar is not None:
            bar.update(1)

    def start(cell: Cell, key: str, deps: dict[str, Dep]) -> None:
        pending.remove(cell)
        lock = device_lock(cell)
        if lock is not None:
            busy.add(lock)
        running[cell.id] = Job(cell, key, deps)
        if bar is not None:
            bar.set_description(cell.id[:60])
        ex.submit(running[cell.id])

    def launch() -> None:
        """Resolve what can be resolved (blocked, cached) and start what may start, in plan order.

        Every other cell goes first: an exclusive timing cell starts, alone, only once nothing is
        running and no other cell could start. The timing cells run one after another whatever
        their order, so this costs them nothing, and the cells that may share the machine (CPU
        work, emulated devices, remote devices) do share it instead of queueing behind a timing
        cell: in ``make demo`` the six emulated-aarch64 counts ran two at a time as the exports
        ended (548-636 s) instead of one at a time between the timing cells (115 s).
        """
        nonlocal alone
        unresolved = {c.id for c in pending} | set(running)
        waiting: tuple[Cell, str, dict[str, Dep]] | None = None  # the first exclusive cell ready to run
        for cell in list(pending):
            if alone:
                return
            if any(d in unresolved for d in cell.deps):
                continue
            entry = _entry(cell)
            missing = [d for d in cell.deps if d not in finished]
            if missing:
                pending.remove(cell)
                unresolved.discard(cell.id)
                summary.status[cell.id] = "blocked"
                entry |= {"status": "blocked", "error": f"dependency {missing[0]} did not finish"}
                summary.errors[cell.id] = entry["error"]
                record(cell, entry)
                continue
            deps = {d: finished[d] for d in cell.deps}
            key = cache_key(key_inputs(cell, cfg, deps, versions))
            cached = store.result(cell.stage, key)
            if cached is not None:
                pending.remove(cell)
                unresolved.discard(cell.id)
                summary.status[cell.id] = "cached"
                finished[cell.id] = Dep(store.cell_dir(cell.stage, key), cached)
                record(cell, entry | {"key": key, "status": "cached", "seconds": cached.get("seconds")})
                continue
            if exclusive(cell):
                if waiting is None:
                    waiting = (cell, key, deps)
                continue
            lock = device_lock(cell)
            if (lock is not None and lock in busy) or len(running) >= ex.slots:
                continue
            start(cell, key, deps)
        if waiting is not None and not running:
            alone = True
            start(*waiting)

    try:
        while pending or running:
            launch()
            if not running:
                if pending:  # pragma: no cover - plan_cells orders dependencies first
                    raise RuntimeError(f"no cell can start; first waiting: {pending[0].id}")
                break
            for outcome in ex.wait():
                job = running.pop(outcome.job.cell.id)
                busy.discard(device_lock(job.cell) or "")
                alone = alone and not exclusive(job.cell)
                record(job.cell, _commit(store, job, outcome, summary, finished))
    except BaseException:
        # Interrupted (Ctrl-C, kill): keep the cells that still finish, drop the rest; the resume redoes them.
        for outcome in ex.drain():
            if outcome.error is None and outcome.result is not None:
                record(outcome.job.cell, _commit(store, outcome.job, outcome, summary, finished))
            elif outcome.tmp is not None:
                shutil.rmtree(outcome.tmp, ignore_errors=True)
        raise
    finally:
        ex.close()
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - t_start
    index["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    index["seconds"] = round(summary.seconds, 1)
    store.write_index(index)
    return summary


def _entry(cell: Cell) -> dict[str, Any]:
    return {"stage": cell.stage, "model": cell.model, "params": dict(cell.params)}


def _commit(store: Store, job: Job, outcome: Outcome, summary: RunSummary, finished: dict[str, Dep]) -> dict[str, Any]:
    """Rename a computed cell into the cache (or record its failure); its index entry."""
    cell, key = job.cell, job.key
    entry = _entry(cell) | {"key": key, "started": round(outcome.started, 3), "ended": round(outcome.ended, 3)}
    if outcome.worker:
        entry["worker"] = outcome.worker
    if outcome.error is not None or outcome.result is None:
        message = outcome.error or "the runner returned no result"
        store.fail(cell.stage, key, outcome.tmp, {"cell": cell.id, "error": message})
        summary.status[cell.id] = "failed"
        summary.errors[cell.id] = message
        print(f"edge-se run: {cell.id}: failed: {message}", file=sys.stderr)
        return entry | {"status": "failed", "error": message}
    result = outcome.result
    result["key"] = key
    assert outcome.tmp is not None  # a result is always computed into a directory
    final = store.commit(cell.stage, key, outcome.tmp, result)
    finished[cell.id] = Dep(final, result)
    summary.status[cell.id] = "done"
    return entry | {"status": "done", "seconds": result.get("seconds")}


def run_config_file(path: str | Path, run_dir: str | Path) -> RunSummary:
    """Load ``path`` and run it into ``run_dir``."""
    return run_sweep(load_config(path), run_dir)
