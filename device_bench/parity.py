"""Numerical agreement of a device run with the host run on the same inputs.

int8 artifacts agree within one quantisation step per element: the integer arithmetic is exact,
but XNNPACK requantises through fp32 (scale multiply, then round to nearest), and a value that
lands on a rounding boundary can round one way on ARM and the other on x86 (fused multiply-add on
one, multiply then add on the other). Seen here: most int8 artifacts bit-identical under
``QEMU_CPU=neoverse-n1``, one MobileNetV3-Small int8 ``.tflite`` one step off on 2 of its 10
logits (the demo's gate-coverage artifact); a wrong
kernel is off by many steps (QEMU's default SVE CPU: 0.135 on a tiny model, a different top-1).
Integer outputs allow 1; float outputs of an int8 artifact allow their output scale when the
manifest gives it, else must be bit-identical. ``bit_identical`` is always reported. fp32
artifacts may differ by summation order between instruction sets; they pass within
``FP32_ATOL + FP32_RTOL * |host|``.
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


#: int8: device and host may differ by this many quantisation steps per element (see above).
INT8_MAX_STEPS = 1


def _step(arr: np.ndarray, scale: float | None) -> float:
    """One quantisation step of an int8 artifact's output, in the output's own units (0: unknown)."""
    if np.issubdtype(arr.dtype, np.integer):
        return 1.0
    return float(scale) if scale else 0.0


def compare(host: Sequence[np.ndarray], device: Sequence[np.ndarray], *, dtype: str,
            scales: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Compare outputs; return ``{passed, rule, bit_identical, max_abs_diff, mean_abs_diff}``.

    ``scales``: per output, its quantisation scale from the manifest (int8 float outputs only).
    """
    if len(host) != len(device) or any(h.shape != d.shape for h, d in zip(host, device, strict=False)):
        return {"passed": False, "rule": "same shapes", "bit_identical": False,
                "max_abs_diff": None, "mean_abs_diff": None}
    identical = all(h.tobytes() == d.tobytes() for h, d in zip(host, device, strict=True))
    diffs = [np.abs(h.astype(np.float64) - d.astype(np.float64)) for h, d in zip(host, device, strict=True)]
    max_abs = max((float(x.max()) for x in diffs if x.size), default=0.0)
    mean_abs = float(np.concatenate([x.ravel() for x in diffs]).mean()) if diffs else 0.0
    if dtype == "int8":
        steps = [_step(h, (scales or [None] * len(host))[i]) for i, h in enumerate(host)]
        rule = f"int8: within {INT8_MAX_STEPS} quantisation step of the host (bit-identical where the step is unknown)"
        passed = identical or all(
            step > 0 and float(x.max(initial=0.0)) <= INT8_MAX_STEPS * step * (1 + 1e-6)
            for x, step in zip(diffs, steps, strict=True)
        )
    else:
        rule = f"fp32: |device - host| <= {FP32_ATOL:g} + {FP32_RTOL:g} * |host|"
        passed = identical or all(
            bool(np.all(np.abs(d.astype(np.float64) - h.astype(np.float64))
                        <= FP32_ATOL + FP32_RTOL * np.abs(h.astype(np.float64))))
            for h, d in zip(host, device, strict=True)
        )
    return {"passed": bool(passed), "rule": rule, "bit_identical": identical,
            "max_abs_diff": max_abs, "mean_abs_diff": mean_abs}
