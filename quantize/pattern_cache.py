"""The stock PT2E quantizers' conv-BN pattern graphs, traced once per process instead of once per call.

XNNPACK's quantizer annotates conv + BatchNorm (+ ReLU) partitions by matching pattern graphs that
it traces, on every ``annotate`` call, with ``torch.export(strict=True)`` through ``torchao``'s
``_get_aten_graph_module_for_pattern``: twelve dynamo traces of the same few-node functions, 6.8 s of
each int8 quantisation on the 2-core AVX2 EPYC whatever the network's size (a conv + SE network of
a few layers quantised in 7.5 s, 0.7 s of it its own work). LiteRT's quantizer has the same call in
its own utilities (patched alike); on edge-se's graphs it made none (measured: no trace, no reuse).
A pattern depends only on its function's code, the values its closure captured (the conv function,
``has_relu``, ``relu_is_inplace``), the example inputs' shapes and dtypes and the device, so within
:func:`cached_patterns` each distinct pattern is traced once and every later request gets a deep
copy of that graph (callers edit what they get). A pattern whose closure holds something unhashable
is traced as before. The annotations, and so the quantised graphs, are the same
(tests/test_pattern_cache.py).
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

from quantize.scoped_patch import ScopedPatch

#: The modules whose quantizers call the tracer by this name (imported into their own namespace).
PATTERN_USERS = ("executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils",
                 "litert_torch.quantize.pt2e_quantizer_utils")
TRACER = "_get_aten_graph_module_for_pattern"

_CACHE: dict[Hashable, Any] = {}
_LOCK = threading.Lock()  # guards _CACHE
stats = {"traced": 0, "reused": 0}  # process-wide counts, for tests and curiosity


def _key(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict[str, Any]) -> Hashable | None:
    """What decides the traced graph; None when a part of it cannot be compared (then nothing is cached)."""
    import torch

    fn = getattr(pattern, "fn", pattern)  # torchao's WrapperModule holds the pattern function as .fn
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    try:
        captured = tuple(cell.cell_contents for cell in (fn.__closure__ or ()))
        inputs = tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x for x in example_inputs)
        key = (code, captured, inputs, bool(is_cuda), tuple(sorted(kwargs.items())))
        hash(key)
    except (TypeError, ValueError):  # an unhashable capture or an empty cell
        return None
    return key


def _cached(trace: Callable[..., Any]) -> Callable[..., Any]:
    def traced(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any) -> Any:
        key = _key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return trace(pattern, example_inputs, is_cuda, **kwargs)
        with _LOCK:
            graph = _CACHE.get(key)
        if graph is None:
            graph = trace(pattern, example_inputs, is_cuda, **kwargs)
            with _LOCK:
                _CACHE.setdefault(key, graph)
            stats["traced"] += 1
        else:
            stats["reused"] += 1
        return copy.deepcopy(graph)

    traced.__wrapped__ = trace  # type: ignore[attr-defined]
    return traced


def _users() -> list[Any]:
    """The pattern users already imported (a quantizer imports its own; importing another toolchain costs seconds)."""
    return [m for m in (sys.modules.get(name) for name in PATTERN_USERS) if m is not None and hasattr(m, TRACER)]


def _install() -> None:
    for module in _users():
        setattr(module, TRACER, _cached(getattr(module, TRACER)))


def _remove() -> None:
    for module in _users():  # one imported inside the block was never wrapped: left as it is
        current = getattr(module, TRACER)
        setattr(module, TRACER, getattr(current, "__wrapped__", current))


_PATCH = ScopedPatch(_install, _remove)


def cached_patterns() -> ScopedPatch:
    """The patch to enter (``with``): the pattern graphs come from the process's cache."""
    return _PATCH
