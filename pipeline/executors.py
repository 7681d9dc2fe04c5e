"""Where and how many cells of a sweep run at once: ``edge-se run --executor local|ray``.

:func:`pipeline.run.run_sweep` decides *which* cell may start (dependencies done, one cell per device,
a timing cell alone on the machine); an executor only runs the cells it is given and hands back their
:class:`Outcome`. Every executor computes a cell the same way (:func:`compute`: a fresh temporary
directory named after the cache key, the stage runner, nothing renamed into the cache here), so the
cells, cache keys and result records do not depend on the executor.

- ``serial``: ``local`` with one job; each cell computed in the calling thread (the plain loop).
- ``local``: a pool of ``jobs`` threads; each cell is an ``edge-se`` subprocess (``stages.run_cell``).
- ``ray``: CPU cells are Ray tasks (``num_cpus=1``); a timing cell on a device timed on this host
  (``local``, the PyTorch ``cpu``/``cuda`` baselines) is a task pinned to the driver's node that
  takes all of its CPUs; every other device is owned by one actor (``max_concurrency=1``), so it
  times one artifact at a time. A worker killed mid-cell is retried (:data:`RAY_MAX_RETRIES`); the
  retry first removes what the dead attempt left. Ray is imported only here, only for ``ray``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from contract.files import sha256_file
from device_bench.transports import emulated
from edge_se.errors import EdgeSeError, first_line
from pipeline.cells import Cell
from pipeline.config import EXECUTORS, RunConfig
from pipeline.stages import Dep, StageError
from pipeline.store import Store

Runner = Callable[[Cell, RunConfig, Mapping[str, Dep], Path], dict[str, Any]]

TIMING_STAGES = ("bench", "baseline")
RAY_MAX_RETRIES = 2  # a worker killed mid-cell (OOM killer, SIGKILL) is retried twice, then recorded failed
# Failures a stage reports as a value; anything else (a bug, an interrupt) propagates.
CELL_ERRORS = (StageError, OSError, ValueError, KeyError, json.JSONDecodeError)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def timing_device(cell: Cell) -> str | None:
    """The device a timing cell (``bench``, ``baseline``) measures on; None for a CPU cell."""
    if cell.stage not in TIMING_STAGES:
        return None
    return str(dict(cell.params).get("device", "local"))


def times_on_host(device: str) -> bool:
    """Whether ``device`` measures wall time on this host's cores, so nothing may share them.

    QEMU devices count instructions (unaffected by load) and URL devices (``ssh://``, ``adb://``)
    time on their own hardware; any other name (``local``, the ``cpu``/``cuda`` baselines, an
    inventory name) is taken to time here: running it alone is slower but never wrong.
    """
    return not (emulated(device) or "://" in device)


def exclusive(cell: Cell) -> bool:
    """A timing cell that must have the machine to itself."""
    device = timing_device(cell)
    return device is not None and times_on_host(device)


def device_lock(cell: Cell) -> str | None:
    """The device a cell must have to itself while it runs, or None (a CPU cell, an emulated device).

    A timing cell times one artifact at a time on its device. An emulated device (QEMU) counts
    instructions on this host's cores, which neither load nor a second emulation beside it changes,
    so its cells run side by side, as CPU cells do.
    """
    device = timing_device(cell)
    return None if device is None or emulated(device) else device


@dataclass
class Job:
    """One cell to compute: its dependencies are finished and its cache key is known."""

    cell: Cell
    key: str
    deps: dict[str, Dep]


@dataclass
class Outcome:
    """What computing a job gave: a result to commit from ``tmp``, or a one-line error."""

    job: Job
    tmp: Path | None
    result: dict[str, Any] | None = None
    error: str | None = None
    started: float = 0.0  # epoch seconds
    ended: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)


def verify_deps(deps: Mapping[str, Dep]) -> None:
    """Check that each dependency's files arrived intact: one of them hashes to its ``output_sha256``.

    Raises:
        StageError: a dependency whose directory holds no file with the recorded digest.
    """
    for dep_id, dep in deps.items():
        want = dep.result.get("output_sha256")
        if not want:
            continue
        files = [p for p in sorted(dep.dir.rglob("*")) if p.is_file() and p.name not in ("result.json", "log.txt")]
        if not any(sha256_file(p) == want for p in files):
            raise StageError(f"dependency {dep_id}: no file in {dep.dir} has its output_sha256 {want[:12]}...")


def compute(root: Path, job: Job, cfg: RunConfig, runner: Runner, *, verify: bool = False) -> Outcome:
    """Compute ``job`` into a fresh temporary directory of the store at ``root`` (not committed).

    Whatever an earlier attempt at the same key left (a worker killed mid-cell) is removed first.
    An interrupt removes the temporary directory and propagates.
    """
    store = Store(root, clean=False)
    store.clear_partial(job.cell.stage, job.key)
    tmp = store.begin(job.cell.stage, job.key)
    started = time.time()
    worker = {"pid": os.getpid(), "thread": threading.current_thread().name}
    try:
        if verify:
            verify_deps(job.deps)
        result = runner(job.cell, cfg, job.deps, tmp)
    except CELL_ERRORS as exc:
        return Outcome(job, tmp, error=first_line(exc, with_type=False), started=started, ended=time.time(),
                       worker=worker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Outcome(job, tmp, result=result, started=started, ended=time.time(), worker=worker)


class Executor(Protocol):
    """Runs the jobs it is given; :func:`pipeline.run.run_sweep` decides when each may start."""

    name: str
    slots: int  # cells at once

    def submit(self, job: Job) -> None:
        """Start computing ``job``."""

    def wait(self) -> list[Outcome]:
        """Block until at least one submitted job is done; return every one that is."""

    def drain(self) -> list[Outcome]:
        """After an interrupt: the jobs that still finish (to keep), the others stopped and removed."""

    def close(self) -> None:
        """Release the workers."""


class SerialExecutor:
    """One cell at a time in the calling thread: exactly the plain loop (``--jobs 1``)."""

    name = "local"
    slots = 1

    def __init__(self, root: Path, cfg: RunConfig, runner: Runner) -> None:
        self.root, self.cfg, self.runner = root, cfg, runner
        self._done: list[Outcome] = []

    def submit(self, job: Job) -> None:
        """Compute ``job`` now."""
        self._done.append(compute(self.root, job, self.cfg, self.runner))

    def wait(self) -> list[Outcome]:
        """The job computed by the last :meth:`submit`."""
        done, self._done = self._done, []
        return done

    def drain(self) -> list[Outcome]:
        """An outcome not yet taken (an interrupt between submit and wait)."""
        return self.wait()

    def close(self) -> None:
        """Nothing to release."""


class ThreadExecutor:
    """``jobs`` threads, each driving one cell (the stages shell out, so threads suffice)."""

    name = "local"

    def __init__(self, root: Path, cfg: RunConfig, runner: Runner, jobs: int) -> None:
        self.root, self.cfg, self.runner, self.slots = root, cfg, runner, jobs
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="edge-se-cell")
        self._running: set[Future[Outcome]] = set()

    def submit(self, job: Job) -> None:
        """Start ``job`` on a free thread."""
        self._running.add(self._pool.submit(compute, self.root, job, self.cfg, self.runner))

    def wait(self) -> list[Outcome]:
        """The jobs done by now (at least one); an interrupt raised in a cell is raised here."""
        done, _ = wait(self._running, return_when=FIRST_COMPLETED)
        for fut in done:
            if fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]  # the others are kept for drain()
        self._running -= done
        return [f.result() for f in done]

    def drain(self) -> list[Outcome]:
        """Wait for the running cells (an interrupt reaches their subprocesses too); the ones that finished."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        done = [f for f in self._running if not f.cancelled() and f.exception() is None]
        self._running = set()
        return [f.result() for f in done]

    def close(self) -> None:
        """Stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ray_compute(root: Path, job: Job, cfg: RunConfig, runner: Runner) -> Outcome:
    import ray

    outcome = compute(root, job, cfg, runner, verify=True)
    outcome.worker = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    return outcome


class _DeviceOwner:
    """Owns one device: cells on it run one after another in this actor (``max_concurrency=1``)."""

    def run(self, root: Path, job: Job, cfg: RunConfig, runner: Runner) -> Outcome:
        return _ray_compute(root, job, cfg, runner)


#: Ray's switch between its single-machine mode and cluster mode (read once, when ``ray`` is imported).
RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only(ray: Any) -> Callable[[], None]:
    """Make the next Ray node this process starts listen on 127.0.0.1 alone; return the undo.

    In cluster mode (Linux's default) Ray replaces a loopback node address with the machine's outward
    one (``services.resolve_ip_for_localhost``), and gcs_server and raylet then listen on every
    interface. In its single-machine mode the node address stays 127.0.0.1 and gcs_server, raylet and
    the runtime-env agent listen on loopback only (seen with ``ss -ltnp`` on Ray 2.60.0). The mode is
    an environment variable read at import, so both the variable (for the processes Ray starts) and
    the imported constant are set.
    """
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(RAY_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(RAY_CLUSTER_ENV, None)
        else:
            os.environ[RAY_CLUSTER_ENV] = old_env

    return restore


def _check_reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EdgeSeError(f"--address {address!r}: expected auto or HOST:PORT (a Ray head's GCS port)")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except OSError as exc:
        raise EdgeSeError(f"--address {address}: no Ray cluster reachable there ({exc.strerror or exc})") from None


class RayExecutor:
    """Cells as Ray tasks on a cluster (``address``) or a head of its own on loopback (``address=None``).

    A head of its own listens on 127.0.0.1 alone (see :func:`_loopback_only`); a cluster joined at
    ``address`` listens where its operator started it.
    """

    name = "ray"

    def __init__(self, root: Path, cfg: RunConfig, runner: Runner, *, address: str | None, jobs: int | None) -> None:
        try:
            import ray
        except ImportError:
            raise EdgeSeError("--executor ray: ray is not installed; run `make setup` (ray is pinned)") from None
        self.ray = ray
        self.root, self.cfg, self.runner = root, cfg, runner
        self._restore: Callable[[], None] = lambda: None
        if address not in (None, "auto"):
            _check_reachable(address)
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
        try:
            if address is None:  # a head of our own, on loopback only
                self._restore = _loopback_only(ray)
                ray.init(address="local", num_cpus=jobs or usable_cores(), _node_ip_address="127.0.0.1", **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self._restore()
            reason = first_line(exc, with_type=False)
            raise EdgeSeError(f"--address {address}: cannot join the Ray cluster: {reason}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = jobs or cpus
        self._node = ray.get_runtime_context().get_node_id()
        node_cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == self._node), 1)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(_ray_compute)
        self._cpu_task = task.options(num_cpus=1, max_retries=RAY_MAX_RETRIES, retry_exceptions=False)
        # A timing cell on this host: on the driver's node, holding every CPU of it, so no task shares its cores.
        self._host_task = task.options(
            num_cpus=node_cpus,
            max_retries=RAY_MAX_RETRIES,
            retry_exceptions=False,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=self._node, soft=False),
        )
        # num_cpus=0: an owner lives for the whole sweep and must not hold a CPU the host-timing task
        # needs (that would deadlock it); the driver still counts its running cell against ``slots``.
        self._owner_cls = ray.remote(_DeviceOwner).options(
            num_cpus=0, max_concurrency=1, max_restarts=RAY_MAX_RETRIES, max_task_retries=RAY_MAX_RETRIES
        )
        self._owners: dict[str, Any] = {}
        self._running: dict[Any, Job] = {}

    def submit(self, job: Job) -> None:
        """Start ``job`` as a task, or on the actor that owns its device."""
        device = timing_device(job.cell)
        args = (self.root, job, self.cfg, self.runner)
        if device is None:
            ref = self._cpu_task.remote(*args)
        elif times_on_host(device):
            ref = self._host_task.remote(*args)
        else:
            if device not in self._owners:
                self._owners[device] = self._owner_cls.remote()
            ref = self._owners[device].run.remote(*args)
        self._running[ref] = job

    def wait(self) -> list[Outcome]:
        """The jobs done by now (at least one); a worker that died past its retries is a failed cell."""
        ready, _ = self.ray.wait(list(self._running), num_returns=1)
        out = []
        for ref in ready:
            job = self._running.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayError as exc:  # worker or actor died RAY_MAX_RETRIES + 1 times
                Store(self.root, clean=False).clear_partial(job.cell.stage, job.key)
                now = time.time()
                lost = f"ray worker lost: {first_line(exc, with_type=False)}"
                out.append(Outcome(job, None, error=lost, started=now, ended=now))
        return out

    def drain(self) -> list[Outcome]:
        """Cancel what still runs (its workers are killed) and drop its partial output."""
        store = Store(self.root, clean=False)
        for ref, job in self._running.items():
            self.ray.cancel(ref, force=True)
            store.clear_partial(job.cell.stage, job.key)
        self._running = {}
        return []

    def close(self) -> None:
        """Stop the device owners and leave the cluster (a cluster we joined keeps running)."""
        for owner in self._owners.values():
            self.ray.kill(owner)
        self.ray.shutdown()
        self._restore()


def make_executor(
    name: str, root: Path, cfg: RunConfig, runner: Runner, *, address: str | None = None, jobs: int | None = None
) -> Executor:
    """The executor ``name`` (``local``: ``jobs`` threads, default the usable cores; ``ray``: a cluster).

    Raises:
        EdgeSeError: an unknown executor, an address given to ``local``, an unreachable cluster.
    """
    if name not in EXECUTORS:
        raise EdgeSeError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise EdgeSeError(f"--jobs must be >= 1, got {jobs}")
    if name == "ray":
        return RayExecutor(root, cfg, runner, address=address, jobs=jobs)
    if address is not None:
        raise EdgeSeError(f"--address {address}: only the ray executor joins a cluster; add --executor ray")
    n = jobs or usable_cores()
    return SerialExecutor(root, cfg, runner) if n == 1 else ThreadExecutor(root, cfg, runner, n)


__all__ = ["EXECUTORS", "Job", "Outcome", "exclusive", "make_executor", "timing_device", "usable_cores"]
