"""Executors of `edge-se run`: local pool vs serial vs Ray give the same sweep; timing cells run alone."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from device_artifacts import artifacts  # noqa: F401  (session fixture)
from test_pipeline import FakeRunner, _cfg

from edge_se.errors import EdgeSeError
from pipeline.cells import plan_cells
from pipeline.executors import device_lock, exclusive, timing_device
from pipeline.run import run_sweep
from pipeline.stages import run_cell

ROOT = Path(__file__).resolve().parent.parent

# One model, every stage; two devices (local wall time, qemu instruction counts), a CPU baseline.
SWEEP = """
[run]
resolution = 64
[data]
source = "random"
calib_size = 8
[[models]]
name = "mobilenetv3_small_050"
train_epochs = 1
[quantize]
policies = ["ptq"]
[export]
formats = ["pte", "tflite"]
dtypes = ["fp32", "int8"]
[bench]
devices = ["local", "qemu-aarch64"]
[baseline]
devices = ["cpu"]
"""
DELAY_S = 0.2  # every fake cell takes this long, so overlapping cells would show in the index


class SlowRunner(FakeRunner):
    """FakeRunner that takes :data:`DELAY_S` per cell and records true digests of the files it writes."""

    def __init__(self, delay: float = DELAY_S, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = delay

    def __call__(self, cell, cfg, deps, workdir: Path) -> dict:
        time.sleep(self.delay)
        out = super().__call__(cell, cfg, deps, workdir)
        for name in (out.get("weights"), out.get("artifact")):
            if name:
                out["output_sha256"] = hashlib.sha256((workdir / name).read_bytes()).hexdigest()
        return out


class KillOnceRunner(SlowRunner):
    """Kills its own worker (SIGKILL) half-way through ``victim`` the first time, leaving a partial file."""

    def __init__(self, marker: Path, victim: str, always: bool = False) -> None:
        super().__init__(delay=0.05)
        self.marker, self.victim, self.always = marker, victim, always

    def __call__(self, cell, cfg, deps, workdir: Path) -> dict:
        if cell.id == self.victim and (self.always or not self.marker.exists()):
            self.marker.write_text(str(os.getpid()))
            (workdir / "half-written.bin").write_bytes(b"\0" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(cell, cfg, deps, workdir)


def _records(run_dir: Path) -> dict[str, tuple[str, str | None, dict | None]]:
    """Cell id -> (status, cache key, stored result without its wall time)."""
    index = json.loads((run_dir / "index.json").read_text())
    out = {}
    for cid, entry in index["cells"].items():
        result = None
        if entry.get("key") and entry["status"] in ("done", "cached"):
            result = json.loads((run_dir / "cells" / entry["stage"] / entry["key"] / "result.json").read_text())
            result.pop("seconds", None)
        out[cid] = (entry["status"], entry.get("key"), result)
    return out


def _partials(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("cells/*/.tmp-*"))


def _overlap(a: dict, b: dict) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


def _computed(run_dir: Path) -> dict[str, dict]:
    cells = json.loads((run_dir / "index.json").read_text())["cells"]
    return {cid: e for cid, e in cells.items() if e["status"] in ("done", "failed")}


def test_jobs_do_not_change_cells_keys_or_results(tmp_path):
    cfg = _cfg(tmp_path, SWEEP)
    s1 = run_sweep(cfg, tmp_path / "serial", runner=SlowRunner(delay=0), jobs=1)
    s2 = run_sweep(cfg, tmp_path / "pool", runner=SlowRunner(delay=0), jobs=2)
    assert s1.ok and s2.ok and s1.status == s2.status
    serial, pool = _records(tmp_path / "serial"), _records(tmp_path / "pool")
    assert list(serial) == list(pool)  # plan order, whatever order the cells finished in
    assert serial == pool
    index = json.loads((tmp_path / "pool" / "index.json").read_text())
    assert index["executor"] == {"name": "local", "jobs": 2} and index["timing"] == "exclusive"


@pytest.mark.slow
def test_timing_cells_run_alone_and_devices_never_overlap(tmp_path):
    cfg = _cfg(tmp_path, SWEEP)
    s = run_sweep(cfg, tmp_path / "run", runner=SlowRunner(), jobs=2)
    assert s.ok
    cells = _computed(tmp_path / "run")
    by_id = {c.id: c for c in plan_cells(cfg)}
    overlaps = [(a, b) for a, b in itertools.combinations(cells, 2) if _overlap(cells[a], cells[b])]
    assert overlaps, "jobs=2 ran nothing in parallel: the overlap checks below would prove nothing"
    for a, b in overlaps:
        ca, cb = by_id[a], by_id[b]
        assert not (exclusive(ca) or exclusive(cb)), f"{a} overlapped the timing cell {b} (or vice versa)"
        da, db = device_lock(ca), device_lock(cb)
        assert da is None or da != db, f"{a} and {b} timed on {da} at the same time"
    assert sum(exclusive(by_id[c]) for c in cells) == 5  # four local benches and the cpu baseline were checked
    # Every exclusive cell ran after every other cell had ended: nothing queued behind a timing cell.
    last_shared = max(e["ended"] for c, e in cells.items() if not exclusive(by_id[c]))
    assert all(cells[c]["started"] >= last_shared for c in cells if exclusive(by_id[c]))
    assert device_lock(next(by_id[c] for c in cells if timing_device(by_id[c]) == "qemu-aarch64")) is None


def test_interrupted_parallel_run_leaves_no_partial_cell_and_resumes(tmp_path):
    cfg = _cfg(tmp_path, SWEEP)
    interrupted = SlowRunner(delay=0.05, interrupt_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "run", runner=interrupted, jobs=2)
    assert _partials(tmp_path / "run") == []
    assert not list((tmp_path / "run").rglob("half-written.bin"))
    kept = [
        c
        for c, e in json.loads((tmp_path / "run" / "index.json").read_text())["cells"].items()
        if e["status"] == "done"
    ]
    assert kept and set(kept) <= set(interrupted.calls)
    resumed = SlowRunner(delay=0)
    s = run_sweep(cfg, tmp_path / "run", runner=resumed, jobs=2)
    assert s.ok and s.count("cached") == len(kept)
    assert not set(resumed.calls) & set(kept)


def test_parallel_failure_is_recorded_and_blocks_only_its_dependants(tmp_path):
    cfg = _cfg(tmp_path, SWEEP)
    s = run_sweep(
        cfg, tmp_path / "run", runner=SlowRunner(delay=0.02, fail_on="export/mobilenetv3_small_050/pte/int8"), jobs=2
    )
    assert not s.ok
    assert s.status["export/mobilenetv3_small_050/pte/int8/ptq"] == "failed"
    blocked = sorted(c for c, v in s.status.items() if v == "blocked")
    assert blocked == [
        "bench/mobilenetv3_small_050/pte/int8/ptq/local",
        "bench/mobilenetv3_small_050/pte/int8/ptq/qemu-aarch64",
    ]
    assert s.count("done") == len(s.status) - 3
    assert (tmp_path / "run" / "failed" / "export").is_dir() and _partials(tmp_path / "run") == []


class TinyArtifactRunner(FakeRunner):
    """Fake train/export (the tiny .tflite of tests/device_artifacts.py as the export), the real bench stage."""

    def __init__(self, artifact: Path) -> None:
        super().__init__()
        self.artifact = artifact

    def __call__(self, cell, cfg, deps, workdir: Path) -> dict:
        if cell.stage == "bench":
            return run_cell(cell, cfg, deps, workdir)
        out = super().__call__(cell, cfg, deps, workdir)
        if cell.stage == "export":
            for f in (self.artifact, self.artifact.with_name(self.artifact.name + ".json")):
                shutil.copy(f, workdir / f.name)
            out |= {"artifact": self.artifact.name, "manifest_file": self.artifact.name + ".json",
                    "output_sha256": hashlib.sha256(self.artifact.read_bytes()).hexdigest()}
        return out


def test_a_device_that_is_gone_fails_only_its_cells_naming_it(tmp_path, artifacts):  # noqa: F811
    # An ssh board that refuses connections (port 1 on loopback: nothing listens) while the sweep runs:
    # its bench cell fails with a line naming the device, and the local bench cell still finishes.
    gone = "ssh://edge@127.0.0.1:1"
    sweep = SWEEP.replace('devices = ["local", "qemu-aarch64"]', f'devices = ["local", "{gone}"]\nruns = 5\n'
                          "warmup = 1\nrepeats = 1\nmin_seconds = 0.0")
    sweep = sweep.replace('formats = ["pte", "tflite"]\ndtypes = ["fp32", "int8"]',
                          'formats = ["tflite"]\ndtypes = ["fp32"]').replace('devices = ["cpu"]', "devices = []")
    cfg = _cfg(tmp_path, sweep)
    s = run_sweep(cfg, tmp_path / "run", runner=TinyArtifactRunner(artifacts["tiny_se_litert_fp32.tflite"]), jobs=1)
    benches = {c: v for c, v in s.status.items() if c.startswith("bench/")}
    assert benches == {"bench/mobilenetv3_small_050/tflite/fp32/-/local": "done",
                       f"bench/mobilenetv3_small_050/tflite/fp32/-/{gone}": "failed"}
    error = s.errors[f"bench/mobilenetv3_small_050/tflite/fp32/-/{gone}"]
    assert "\n" not in error and f"{gone}: connection refused" in error and "edge-se bench exited 1" in error
    assert all(v == "done" for c, v in s.status.items() if c not in benches)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_se.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--executor", "dask"], "unknown executor 'dask'; valid: local, ray"),
        (["--executor", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster reachable"),
        (["--address", "127.0.0.1:6379"], "only the ray executor joins a cluster"),
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    ],
)
def test_bad_executor_flags_are_one_line_errors(tmp_path, flags, needle):
    (tmp_path / "sweep.toml").write_text(SWEEP)
    proc = _cli("run", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "run"), *flags)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "run" / "cells").exists()


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('executor = "dask"', "[run].executor: unknown executor 'dask'; valid: local, ray"),
        ("jobs = 0", "[run].jobs: must be > 0, got 0"),
        ("address = 6379", "[run].address: expected str"),
    ],
)
def test_bad_run_table_keys_name_the_key(tmp_path, line, needle):
    with pytest.raises(EdgeSeError, match=re.escape(needle)):
        _cfg(tmp_path, SWEEP.replace("resolution = 64", f"resolution = 64\n{line}", 1))


def test_run_table_sets_the_executor_and_the_flag_overrides_it(tmp_path):
    cfg = _cfg(tmp_path, SWEEP.replace("resolution = 64", 'resolution = 64\nexecutor = "local"\njobs = 1', 1))
    assert (cfg.executor, cfg.jobs, cfg.address) == ("local", 1, None)
    run_sweep(cfg, tmp_path / "a", runner=SlowRunner(delay=0))
    assert json.loads((tmp_path / "a" / "index.json").read_text())["executor"]["jobs"] == 1
    run_sweep(cfg, tmp_path / "b", runner=SlowRunner(delay=0), jobs=2)
    assert json.loads((tmp_path / "b" / "index.json").read_text())["executor"]["jobs"] == 2


# --- Ray ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_env():
    """Ray workers import the fake runners from this directory; Ray's files go to a folder removed after."""
    pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_TMPDIR")}
    old = saved["PYTHONPATH"]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), *([old] if old else [])])
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # The test cluster's nodes and driver would need one shared token; it listens on loopback only.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    os.environ["RAY_TMPDIR"] = temp  # sessions, logs and sockets here, not in /tmp/ray
    yield temp
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(temp, ignore_errors=True)


def _listening(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``pids``."""
    import psutil

    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(proc.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def two_nodes(ray_env):
    """A head with 2 CPUs and a second node with 1 (Ray's own multi-node test cluster), on loopback only.

    Started in Ray's single-machine mode (``_loopback_only``, as the executor starts a head of its
    own), so both nodes' node address is 127.0.0.1 and their servers listen there alone.
    """
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.executors import _loopback_only

    restore = _loopback_only(ray)
    cluster = Cluster(shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=2, include_dashboard=False)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert {n.node_ip_address for n in [cluster.head_node, *cluster.worker_nodes]} == {"127.0.0.1"}
        yield cluster.address
    finally:
        cluster.shutdown()
        restore()


@pytest.mark.slow
def test_ray_local_head_gives_the_same_sweep_as_local(tmp_path, ray_env):
    cfg = _cfg(tmp_path, SWEEP)
    run_sweep(cfg, tmp_path / "local", runner=SlowRunner(delay=0), jobs=2)
    s = run_sweep(cfg, tmp_path / "ray", runner=SlowRunner(delay=0), executor="ray", jobs=2)
    assert s.ok, s.errors
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "index.json").read_text())["executor"] == {"name": "ray", "jobs": 2}


@pytest.mark.slow
def test_ray_cells_run_on_both_nodes_and_timing_cells_alone(tmp_path, two_nodes):
    cfg = _cfg(tmp_path, SWEEP)
    s = run_sweep(cfg, tmp_path / "run", runner=SlowRunner(delay=0.5), executor="ray", address=two_nodes)
    assert s.ok, s.errors
    cells = _computed(tmp_path / "run")
    nodes = {e["worker"]["node"] for e in cells.values()}
    assert len(nodes) == 2, f"cells ran on {len(nodes)} node(s): {nodes}"
    by_id = {c.id: c for c in plan_cells(cfg)}
    for a, b in itertools.combinations(cells, 2):
        if _overlap(cells[a], cells[b]):
            assert not (exclusive(by_id[a]) or exclusive(by_id[b])), f"{a} overlapped {b}"
            assert device_lock(by_id[a]) is None or device_lock(by_id[a]) != device_lock(by_id[b])
    run_sweep(cfg, tmp_path / "local", runner=SlowRunner(delay=0), jobs=2)
    assert _records(tmp_path / "run") == _records(tmp_path / "local")


@pytest.mark.slow
def test_ray_nodes_and_workers_listen_on_loopback_only(tmp_path, two_nodes):
    import ray

    ray.init(address=two_nodes, log_to_driver=False)
    try:
        assert sum(n["Alive"] for n in ray.nodes()) == 2
        # A task on each node starts its workers; then every listening socket of every Ray process.
        ray.get([ray.remote(num_cpus=1)(lambda: os.getpid()).remote() for _ in range(3)])
        sockets = _listening(_descendants())
    finally:
        ray.shutdown()
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, f"the check saw no Ray server: {sockets}"
    beyond = [s for s in sockets if s[1] not in LOOPBACK]
    assert not beyond, f"listening beyond loopback: {beyond}"


@pytest.mark.slow
def test_ray_local_head_listens_on_loopback_only(tmp_path, ray_env):
    import ray

    from pipeline.executors import RAY_CLUSTER_ENV, RayExecutor

    cfg = _cfg(tmp_path, SWEEP)
    before = os.environ.get(RAY_CLUSTER_ENV)
    ex = RayExecutor(tmp_path / "run", cfg, SlowRunner(delay=0), address=None, jobs=2)
    try:
        sockets = _listening(_descendants())
    finally:
        ex.close()
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in sockets}, sockets
    assert not [s for s in sockets if s[1] not in LOOPBACK], sockets
    assert os.environ.get(RAY_CLUSTER_ENV) == before and not ray.is_initialized()


@pytest.mark.slow
def test_ray_worker_killed_mid_cell_is_retried_and_leaves_nothing_half_written(tmp_path, two_nodes):
    cfg = _cfg(tmp_path, SWEEP)
    victim = "export/mobilenetv3_small_050/tflite/fp32/-"
    marker = tmp_path / "killed.pid"
    s = run_sweep(cfg, tmp_path / "run", runner=KillOnceRunner(marker, victim), executor="ray", address=two_nodes)
    assert marker.exists(), "the runner never killed its worker: the test proves nothing"
    assert s.ok and s.status[victim] == "done", s.errors
    entry = json.loads((tmp_path / "run" / "index.json").read_text())["cells"][victim]
    assert entry["worker"]["pid"] != int(marker.read_text())  # a fresh worker finished it
    assert _partials(tmp_path / "run") == [] and not list((tmp_path / "run").rglob("half-written.bin"))


@pytest.mark.slow
def test_ray_worker_killed_every_time_is_a_failed_cell(tmp_path, two_nodes):
    cfg = _cfg(tmp_path, SWEEP)
    victim = "export/mobilenetv3_small_050/tflite/fp32/-"
    s = run_sweep(
        cfg,
        tmp_path / "run",
        runner=KillOnceRunner(tmp_path / "m", victim, always=True),
        executor="ray",
        address=two_nodes,
    )
    assert s.status[victim] == "failed" and "ray worker lost" in s.errors[victim]
    assert s.status["bench/mobilenetv3_small_050/tflite/fp32/-/local"] == "blocked"
    assert s.count("done") == len(s.status) - 3  # the export and its two benches, nothing else
    assert _partials(tmp_path / "run") == [] and not list((tmp_path / "run").rglob("half-written.bin"))
