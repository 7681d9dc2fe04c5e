"""Shared fixtures: RNG isolation (as torchvision's ``prevent_leaking_rng``) and CPU-only defaults."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch


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
#: a time (``--dist loadgroup``); sending these first keeps a long module from starting last and
#: running alone while the other worker idles.
LONGEST_FIRST = ("test_export", "test_gate_outputs", "test_latency", "test_fidelity", "test_float_prefix",
                 "test_quantize", "test_peers", "test_device_bench_profile")


def _group(item: pytest.Item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")) if mark else item.path.stem


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One xdist group per module unless a test names its own, and the longest groups first.

    A module's tests share module fixtures and cached exports (test_export_cache), so splitting
    one module over two workers would build them twice. A test that reuses another module's
    cache names that module's group (tests/test_verify.py). Runs before xdist reads the groups.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(_group(it), len(rank)))  # stable: each module keeps its order


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # 2-core CI machine: two intra-op threads, or one per worker when two pytest-xdist workers share it.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))
    yield
