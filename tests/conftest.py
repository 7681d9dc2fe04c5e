"""Shared fixtures: RNG isolation (as torchvision's ``prevent_leaking_rng``) and CPU-only defaults."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from test_export_cache import SHARED_ENV


@pytest.fixture(autouse=True)
def prevent_leaking_rng():
    """Restore torch, numpy and random state after every test so tests cannot depend on order."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


#: The modules that take longest (seconds on the 2-core AVX2 CI machine, from ``--durations``), in
#: that order. ``make test`` runs the suite on two pytest-xdist workers, one module to a worker at
#: a time (``--dist loadfile``: a module's tests share its fixtures); sending these first keeps a
#: long module from starting last and running alone while the other worker idles.
LONGEST_FIRST = ("test_export", "test_gate_outputs", "test_latency", "test_int8_ops", "test_native_gate_score",
                 "test_device_bench_qemu", "test_float_prefix", "test_quantize_lowering", "test_fidelity", "test_qat")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first; each module keeps its own order (xdist then schedules in this order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.stem, len(rank)))  # stable


@pytest.fixture(autouse=True, scope="session")
def _shared_folder(tmp_path_factory):
    """A folder every pytest-xdist worker of this run sees, for exports one worker makes for all
    (tests/test_export_cache.py): the run's base temporary folder, which pytest prunes itself."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    os.environ[SHARED_ENV] = str(folder)
    yield folder


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # 2-core CI machine: two intra-op threads, or one per worker when two pytest-xdist workers share it.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))
    yield
