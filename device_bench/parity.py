"""Numerical agreement of a device run with the host run on the same inputs.

int8 artifacts must be bit-identical (the integer kernels are exact; with ``QEMU_CPU=neoverse-n1``
emulated ARM matches x86 bit for bit). fp32 artifacts may differ by summation order between
instruction sets; they pass within ``FP32_ATOL + FP32_RTOL * |host|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: fp32 tolerance device vs host. Seen: 2e-7 on a tiny model, emulated Neoverse-N1 vs x86
#: (../shared/PLATFORM.md); 1e-5 leaves room for deeper models without hiding a wrong kernel.
FP32_ATOL = 1e-5
FP32_RTOL = 1e-5


def decode(raw: bytes, outputs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """Split the runner's ``--dump-outputs`` bytes into arrays using its ``outputs`` list."""
    arrays, offset = [], 0
    for spec in outputs:
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        n = int(np.prod(spec["shape"])) if spec["shape"] else 1
        arrays.append(np.frombuffer(raw, dtype=dtype, count=n, offset=offset).reshape(spec["shape"]))
        offset += n * dtype.itemsize
    if offset != len(raw):
        raise ValueError(f"output dump has {len(raw)} bytes, the outputs list describes {offset}")
    return arrays


def compare(host: Sequence[np.ndarray], device: Sequence[np.ndarray], *, dtype: str) -> dict[str, Any]:
    """Compare outputs; return ``{passed, rule, bit_identical, max_abs_diff, mean_abs_diff}``."""
    if len(host) != len(device) or any(h.shape != d.shape for h, d in zip(host, device, strict=False)):
        return {"passed": False, "rule": "same shapes", "bit_identical": False,
                "max_abs_diff": None, "mean_abs_diff": None}
    identical = all(h.tobytes() == d.tobytes() for h, d in zip(host, device, strict=True))
    diffs = [np.abs(h.astype(np.float64) - d.astype(np.float64)) for h, d in zip(host, device, strict=True)]
    max_abs = max((float(x.max()) for x in diffs if x.size), default=0.0)
    mean_abs = float(np.concatenate([x.ravel() for x in diffs]).mean()) if diffs else 0.0
    if dtype == "int8":
        rule, passed = "int8: bit-identical", identical
    else:
        rule = f"fp32: |device - host| <= {FP32_ATOL:g} + {FP32_RTOL:g} * |host|"
        passed = identical or all(
            bool(np.all(np.abs(d.astype(np.float64) - h.astype(np.float64))
                        <= FP32_ATOL + FP32_RTOL * np.abs(h.astype(np.float64))))
            for h, d in zip(host, device, strict=True)
        )
    return {"passed": bool(passed), "rule": rule, "bit_identical": identical,
            "max_abs_diff": max_abs, "mean_abs_diff": mean_abs}
