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

The step rule is exact enough for shallow graphs, not for deep ones: a one-step difference in an
early layer is requantised by every layer after it. Seen (2026-12-05, emulated Neoverse-N1): 6 of
114 latency-table artifacts, random-weight probes of deep MBConv blocks and one held-out network,
0.023-0.032 (max abs) from the host. An int8 artifact that fails the step rule is therefore judged
again on its own golden inputs (``{artifact}.parity.npz``, written at export with the float
model's outputs on them; :func:`device_bench.manifest.load_golden`), against the int8 error
itself (:func:`golden_compare`): the device may depart from the host by no more than the host
departs from the float model, SQNR(device vs host) >= SQNR(host vs float) on the logits. That is
the export check's rule (``export.parity``: the runtime vs the quantised reference) with no margin
(export allows 6 dB). A wrong kernel (QEMU's default SVE CPU: 0.135 off on a tiny model, another
top-1) departs from the host by as much as the signal and fails it; the SQNRs are reported
either way.
"""

from __future__ import annotations

import math
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

#: int8 on the golden inputs, after the step rule fails: SQNR(device vs host) may fall this far
#: below SQNR(host vs float) (the int8 error itself), in dB.
GOLDEN_MARGIN_DB = 0.0

GOLDEN_RULE = ("int8 on the artifact's golden inputs: SQNR(device vs host) >= SQNR(host vs float model)"
               + (f" - {GOLDEN_MARGIN_DB:g} dB" if GOLDEN_MARGIN_DB else "")
               + " (the device departs from the host by no more than int8 departs from float)")


def flat64(x: np.ndarray) -> np.ndarray:
    """``x`` as one float64 vector (the form every parity figure is computed on)."""
    return np.asarray(x, dtype=np.float64).ravel()


def sqnr_db(actual: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Signal-to-quantisation-noise ratio ``10 log10(sum r^2 / sum (a - r)^2)`` in dB (inf if exact).

    The one definition for numpy arrays (``export.parity`` uses it); pairs are summed over every
    array, so a batch of samples gives one figure.
    """
    signal = sum(float(np.sum(flat64(r) ** 2)) for r in reference)
    noise = sum(float(np.sum((flat64(a) - flat64(r)) ** 2)) for a, r in zip(actual, reference, strict=True))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def finite(x: float) -> float | str:
    """``x``, or ``"inf"``/``"-inf"``/``"nan"`` as text: JSON has no infinities."""
    return x if math.isfinite(x) else str(x)


def golden_compare(host: Sequence[np.ndarray], device: Sequence[np.ndarray],
                   float_reference: Sequence[np.ndarray]) -> dict[str, Any]:
    """int8 device vs host on the golden inputs, judged against the int8 error (:data:`GOLDEN_RULE`).

    Args:
        host: per golden input, the logits the host's runner gave (float).
        device: the same from the device.
        float_reference: the float model's logits on the same inputs (from the parity data).

    Returns:
        ``{passed, rule, samples, bit_identical, max_abs_diff, sqnr_db_device_vs_host,
        sqnr_db_host_vs_float, sqnr_db_device_vs_float}`` (dB; an exact match reads ``"inf"``).
    """
    if len(host) != len(device) or len(host) != len(float_reference) or not host:
        raise ValueError(f"golden comparison needs one host, device and float output per input: "
                         f"{len(host)}, {len(device)}, {len(float_reference)}")
    dev_host = sqnr_db(device, host)
    host_float = sqnr_db(host, float_reference)
    dev_float = sqnr_db(device, float_reference)
    identical = all(np.array_equal(h, d) for h, d in zip(host, device, strict=True))
    max_abs = max(float(np.max(np.abs(flat64(h) - flat64(d)), initial=0.0)) for h, d in zip(host, device, strict=True))
    return {"passed": bool(identical or dev_host >= host_float - GOLDEN_MARGIN_DB), "rule": GOLDEN_RULE,
            "samples": len(host), "bit_identical": identical, "max_abs_diff": max_abs,
            "sqnr_db_device_vs_host": finite(dev_host), "sqnr_db_host_vs_float": finite(host_float),
            "sqnr_db_device_vs_float": finite(dev_float)}


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
