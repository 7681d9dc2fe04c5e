"""Shared fixtures: RNG isolation (as torchvision's ``prevent_leaking_rng``) and CPU-only defaults."""

from __future__ import annotations

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


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # 2-core CI machine: one intra-op thread keeps parallel pytest-free runs predictable.
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    yield
