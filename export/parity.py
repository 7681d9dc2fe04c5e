"""Parity metrics and the pass/fail rules an artifact must meet before it is written (pure numpy).

Two kinds of check, each with its tolerance stated and explained here, in one place:

* **fp32 artifact vs the eager model.** Both compute the same float graph; the runtimes
  (XNNPACK in ExecuTorch and in LiteRT) reorder and fuse float sums (tiled GEMM micro-kernels,
  FMA, BatchNorm folded into the conv weights before rounding), so results differ by float
  rounding only: about 1e-7 relative per layer, compounding to ~1e-5 over 50-100 layers.
  :data:`FP32_RTOL` allows 1e-3 of the reference's own scale (ExecuTorch's test-harness default),
  a factor of ~100 above what we measure and far below what a wrong graph (a missing layer, a
  transposed weight) produces (order 1). The error is taken relative to the largest reference
  magnitude, not element-wise, because randomly initialised nets can have logits near 1e-10
  (an absolute tolerance would then pass anything).

* **int8 artifact vs the quantised PyTorch reference** (the converted PT2E graph, which
  emulates the quantise/dequantise steps in float). This is *not* bit-exact: integer kernels
  round requantisations with fixed-point multipliers, XNNPACK fuses dequantize-op-quantize chains
  (hard-swish, the SE gate and its multiply) into its own kernels, and a one-step difference in an
  early layer propagates through 50+ layers. Measured here (random weights, random calibration,
  64 px) the runtimes' outputs differ from the emulation's by 0-23 output steps with a broad
  spread (not a systematic offset), about as far as the emulation is from the float model:
  MobileNetV3-Small ~15 dB, EfficientNet-B0 11-12 dB. ExecuTorch's own calibrated int8
  MobileNetV3 test is disabled for this reason (T187799178 in its test suite). So the rule is
  relative to the quantisation error itself: the artifact's SQNR against the emulation must be
  at least the emulation's SQNR against the float model minus :data:`INT8_REF_MARGIN_DB` (the
  runtime may deviate from the emulation by up to twice the quantisation error in amplitude),
  with a cosine floor :data:`INT8_REF_MIN_COSINE`. A broken lowering (wrong scale, a dropped or
  transposed layer) gives cosine near 0 and SQNR <= 0 dB and fails both. The error in output
  quantisation steps is reported, not gated.

* **int8 artifact vs the float model** (quality, not exactness): cosine similarity of the
  logits >= :data:`INT8_MIN_COSINE`, SQNR >= :data:`INT8_MIN_SQNR_DB` and, on real images only,
  top-1 agreement >= :data:`INT8_MIN_TOP1_AGREEMENT`. Trained nets quantised with PT2E reach
  20-30 dB (PLATFORM.md: MobileNetV3-Small ~25 dB); random weights with random calibration reach
  only 10-15 dB here, so the floor is set where the int8 model stops resembling the float one at
  all (noise power above a quarter of the signal's) rather than where a good one lies; the
  quantisation report (``quantize``) is where quality is judged. Top-1 on random inputs is near a
  tie between classes and says little, so it is reported but gated only on real images.
  When real images are among the samples, the float comparison is gated on them alone: a
  network calibrated on real data meets random noise out of distribution (its activations leave
  the calibrated ranges and clip), so its float agreement on noise measures the input, not the
  artifact. Seen here: a MobileNetV3-Small trained on the digits gave 0.8 dB on noise and full
  top-1 agreement on the digits. The figures on every sample are still reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from device_bench.parity import finite, flat64, sqnr_db

FP32_RTOL = 1e-3
"""fp32 runtime vs eager: max |a - r| / max |r| (float sums reordered; see the module docstring)."""

INT8_REF_MARGIN_DB = 6.0
"""int8 runtime vs quantised reference: SQNR may fall this far below the reference's own SQNR vs float."""

INT8_REF_MIN_COSINE = 0.8
"""int8 runtime vs quantised reference: cosine floor (a broken lowering gives ~0)."""

INT8_MIN_COSINE = 0.8
"""int8 runtime vs float model: cosine similarity of the logits."""

INT8_MIN_SQNR_DB = 6.0
"""int8 runtime vs float model: signal-to-quantisation-noise ratio of the logits, in dB."""

INT8_MIN_TOP1_AGREEMENT = 0.5
"""int8 runtime vs float model: share of real images with the same top-1 class."""


def max_abs_error(actual: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Largest ``|actual - reference|`` over all samples (same units as the outputs)."""
    return max(float(np.max(np.abs(flat64(a) - flat64(r)))) for a, r in zip(actual, reference, strict=True))


def mean_abs_error(actual: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Mean ``|actual - reference|`` over all elements of all samples."""
    diffs = np.concatenate([np.abs(flat64(a) - flat64(r)) for a, r in zip(actual, reference, strict=True)])
    return float(diffs.mean())


def max_abs(values: Sequence[np.ndarray]) -> float:
    """Largest magnitude over all samples."""
    return max(float(np.max(np.abs(flat64(v)))) for v in values)


def cosine(actual: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Smallest per-sample cosine similarity (1 = same direction); 1.0 when both are all zero."""
    worst = 1.0
    for a, r in zip(actual, reference, strict=True):
        fa, fr = flat64(a), flat64(r)
        na, nr = float(np.linalg.norm(fa)), float(np.linalg.norm(fr))
        if na == 0.0 and nr == 0.0:
            continue
        c = float(fa @ fr) / (na * nr) if na > 0.0 and nr > 0.0 else 0.0
        worst = min(worst, c)
    return worst


def top1_agreement(actual: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Share of samples (0..1) whose arg-max class is the same."""
    same = [int(np.argmax(flat64(a))) == int(np.argmax(flat64(r))) for a, r in zip(actual, reference, strict=True)]
    return sum(same) / len(same)


def fp32_parity(
    actual: Sequence[np.ndarray], reference: Sequence[np.ndarray], *, real_images: Sequence[bool] | None = None
) -> dict[str, object]:
    """fp32 artifact vs eager model: max/mean abs error, error relative to the reference scale.

    When real images are among the samples the gate applies to them alone, for the reason given
    for int8 in the module docstring: a network whose BatchNorm statistics come from real images
    (random weights re-estimated on the digits, say) meets noise inputs with near-zero running
    variances, its logits reach 1e4 and float re-association errors grow with them (measured:
    EfficientNet-B0, 14% relative on noise, 3e-6 on the digits and on noise-calibrated weights).

    Returns:
        JSON-ready figures with ``passed`` (relative error <= :data:`FP32_RTOL`) and the tolerance.
    """
    real = [i for i, flag in enumerate(real_images or []) if flag]
    gated = real or list(range(len(actual)))
    act, ref = [actual[i] for i in gated], [reference[i] for i in gated]
    err = max_abs_error(act, ref)
    scale = max_abs(ref)
    rel = err / scale if scale > 0.0 else (0.0 if err == 0.0 else math.inf)
    all_scale = max_abs(reference)
    all_err = max_abs_error(actual, reference)
    return {
        "reference": "eager",
        "samples": len(reference),
        "gated_on": "real_images" if real else "all_samples",
        "max_abs_error": err,
        "mean_abs_error": mean_abs_error(act, ref),
        "reference_max_abs": scale,
        "max_rel_error": finite(rel),
        "max_rel_error_all_samples": finite(all_err / all_scale if all_scale > 0.0 else 0.0),
        "rtol": FP32_RTOL,
        "top1_agreement": top1_agreement(actual, reference),
        "passed": bool(rel <= FP32_RTOL),
    }


def int8_parity(
    actual: Sequence[np.ndarray],
    quantized_reference: Sequence[np.ndarray],
    float_reference: Sequence[np.ndarray],
    *,
    output_scale: float | None,
    real_images: Sequence[bool],
    gate_top1: bool = True,
    gate_float: bool = True,
) -> dict[str, object]:
    """int8 artifact vs the quantised PyTorch reference (exactness) and the float model (quality).

    Args:
        actual: runtime outputs (dequantised to float).
        quantized_reference: outputs of the converted PT2E graph on the same inputs.
        float_reference: outputs of the float model on the same inputs.
        output_scale: the output's quantisation step (float units per integer step), if known.
        real_images: per sample, whether the input is a real image (top-1 is gated only on those).
        gate_top1: gate top-1 agreement at all; False for random weights, whose class scores are
            near-ties on every image (measured: SE-ResNet-50 with random weights, 12% top-1
            agreement at 9 dB logits SQNR), so top-1 is then reported only.
        gate_float: gate the fidelity to the float model at all; False for latency probes
            (:mod:`latency.measure`): a deep random-weight network loses most of its float
            fidelity in int8 whatever the artifact does (EfficientNet phi 1 at 224 px: 3.5-4.7 dB
            vs float while its runtime matched the quantised graph), and the probe is timed, not
            shipped. The vs-float figures are reported either way; ``float_gated`` says which.

    Returns:
        JSON-ready figures with ``passed`` and every threshold applied.
    """
    err = max_abs_error(actual, quantized_reference)
    if output_scale is None or output_scale <= 0.0:
        lo = min(float(np.min(flat64(r))) for r in quantized_reference)
        hi = max(float(np.max(flat64(r))) for r in quantized_reference)
        output_scale = (hi - lo) / 255.0 or 1e-12
    steps = err / output_scale
    ref_cos = cosine(actual, quantized_reference)
    ref_sqnr = sqnr_db(actual, quantized_reference)
    quant_sqnr = sqnr_db(quantized_reference, float_reference)  # the quantisation error itself
    min_ref_sqnr = quant_sqnr - INT8_REF_MARGIN_DB
    real = [i for i, flag in enumerate(real_images) if flag]
    gated = real or list(range(len(actual)))  # in-distribution samples when there are any
    f_cos = cosine([actual[i] for i in gated], [float_reference[i] for i in gated])
    f_sqnr = sqnr_db([actual[i] for i in gated], [float_reference[i] for i in gated])
    top1_all = top1_agreement(actual, float_reference)
    top1_real = top1_agreement([actual[i] for i in real], [float_reference[i] for i in real]) if real else None
    checks = {
        "vs_quantized_cosine": ref_cos >= INT8_REF_MIN_COSINE,
        "vs_quantized_sqnr": ref_sqnr >= min_ref_sqnr,
        "vs_float_cosine": not gate_float or f_cos >= INT8_MIN_COSINE,
        "vs_float_sqnr": not gate_float or f_sqnr >= INT8_MIN_SQNR_DB,
        "vs_float_top1_real": not gate_float or not gate_top1 or top1_real is None
        or top1_real >= INT8_MIN_TOP1_AGREEMENT,
    }
    return {
        "reference": "quantized_pt2e+float",
        "float_gated": gate_float,
        "samples": len(actual),
        "real_images": len(real),
        "vs_quantized": {
            "max_abs_error": err,
            "mean_abs_error": mean_abs_error(actual, quantized_reference),
            "output_scale": output_scale,
            "max_error_steps": steps,
            "cosine": ref_cos,
            "sqnr_db": finite(ref_sqnr),
            "min_cosine": INT8_REF_MIN_COSINE,
            "min_sqnr_db": finite(min_ref_sqnr),
            "reference_vs_float_sqnr_db": finite(quant_sqnr),
        },
        "vs_float": {
            "max_abs_error": max_abs_error(actual, float_reference),
            "gated_on": "real_images" if real else "all_samples",
            "cosine": f_cos,
            "sqnr_db": finite(f_sqnr),
            "cosine_all_samples": cosine(actual, float_reference),
            "sqnr_db_all_samples": finite(sqnr_db(actual, float_reference)),
            "top1_agreement": top1_all,
            "top1_agreement_real": top1_real,
            "min_cosine": INT8_MIN_COSINE,
            "min_sqnr_db": INT8_MIN_SQNR_DB,
            "min_top1_agreement_real": INT8_MIN_TOP1_AGREEMENT,
        },
        "failed_checks": [k for k, ok in checks.items() if not ok],
        "passed": all(checks.values()),
    }


GATE_FP32_ATOL = FP32_RTOL
"""fp32 gate outputs vs the eager graph: max absolute error. Gates lie in [0, 1], so this is
:data:`FP32_RTOL` relative to their full scale (float re-association only, as for the logits)."""

GATE_FP32_MIN_COSINE = 1.0 - 1e-6
GATE_FP32_MAX_ABS = 0.01
"""The fp32 gate check's second way to pass: every sample's cosine >= :data:`GATE_FP32_MIN_COSINE`
and max absolute error <= :data:`GATE_FP32_MAX_ABS` (2.5 int8 steps of a [0, 1] gate).

Why: float re-association error grows with depth and with the size of the values that feed a
gate, and the logits' check is relative for that reason. Measured: the digits MobileNetV3-Small
trained at 32 px and exported at 224 px (logits ~85) has its last block's gate 1.5e-3 off
(relative logits error 5e-5, cosine 1 - 1.5e-8), above :data:`GATE_FP32_ATOL`. A wrong gate output
(another block's, zeros, a layout slip) moves the cosine far below 1 - 1e-6; a scaled one is
caught by the absolute bound."""

GATE_INT8_MAX_STEPS = 16.0
"""int8 gate outputs vs the quantised PyTorch graph: max error in the gate's own quantisation steps.

The gate is a sigmoid/hard-sigmoid output quantised on its own grid (about 1/256 of [0, 1]). Its
input is requantised by the integer kernels with fixed-point multipliers, so the upstream
differences between runtime and emulation (see the int8 logits above) reach it. Measured:
tiny conv+SE model and MobileNetV3-Small-050 with random weights, 0 steps in both runtimes; the
digits-trained MobileNetV3-Small-100 (32 px) in ExecuTorch/XNNPACK, 0-7 steps per block (its
logits: 11 steps) at cosine >= 0.9998. 16 steps (~6% of the gate range) leaves twice that
margin and still flags a gate wired to the wrong tensor or dequantised with the wrong scale
(errors of order 0.5, i.e. > 100 steps). A gate further off passes on :data:`GATE_INT8_MIN_SQNR_DB`."""

GATE_INT8_MIN_SQNR_DB = 20.0
"""int8 gates vs the quantised PyTorch graph: the second way to pass, SQNR >= this (noise 1% of the power).

The runtime's upstream differences arrive at a late gate through coarse grids (fc1's output,
fc2's), and one step there moves the gate by several of its own 1/256 steps. Measured: the digits
MobileNetV3-Small exported at 224 px (BatchNorm re-estimated there, for latency) has block 10's
fc2 output on a 0.104 grid, so one of its steps is 4.5 gate steps; the ``.tflite`` gate was 27
steps off (cosine 0.9993, about 28 dB) and the ``.pte`` with ``gate-fixed`` 24 steps (32.8 dB), while the
logits were 7-8 steps off and passed their own relative rule. A gate wired to another block's
tensor, with its channels shifted, or dequantised with a wrong scale is under 10 dB."""


def gate_parity(
    actual: Sequence[Sequence[np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]],
    float_reference: Sequence[Sequence[np.ndarray]] | None,
    *,
    names: Sequence[str],
    scales: Sequence[float | None],
    dtype: str,
) -> dict[str, object]:
    """Per SE block, the artifact's gate output against the lowered PyTorch graph's (and the float model's).

    Args:
        actual: per block, the runtime's gate output of each sample.
        reference: per block, the lowered graph's gate of each sample (eager fp32, or the PT2E graph).
        float_reference: per block, the float model's gate (int8 only; reported, not gated).
        names: the SE blocks' module paths.
        scales: per block, the gate's quantisation step (int8), or None.
        dtype: ``fp32`` (gated on :data:`GATE_FP32_ATOL`) or ``int8`` (:data:`GATE_INT8_MAX_STEPS`
            steps, or :data:`GATE_INT8_MIN_SQNR_DB`).

    Returns:
        ``{"blocks": [...], "max_abs_error", "max_error_steps", "passed", ...}`` (JSON-ready).
    """
    rows = []
    ok = True
    for i, name in enumerate(names):
        err = max_abs_error(actual[i], reference[i])
        cos = cosine(actual[i], reference[i])
        row: dict[str, object] = {"block": name, "max_abs_error": err, "cosine": cos}
        scale = scales[i]
        if dtype == "int8" and scale:
            steps = err / scale
            sqnr = sqnr_db(actual[i], reference[i])
            row |= {"scale": scale, "max_error_steps": steps, "sqnr_db": finite(sqnr)}
            ok &= steps <= GATE_INT8_MAX_STEPS or sqnr >= GATE_INT8_MIN_SQNR_DB
        else:
            ok &= err <= GATE_FP32_ATOL or (cos >= GATE_FP32_MIN_COSINE and err <= GATE_FP32_MAX_ABS)
        if float_reference is not None:
            row["vs_float_max_abs_error"] = max_abs_error(actual[i], float_reference[i])
            row["vs_float_sqnr_db"] = finite(sqnr_db(actual[i], float_reference[i]))
        rows.append(row)
    steps_all = [float(r["max_error_steps"]) for r in rows if "max_error_steps" in r]  # type: ignore[arg-type]
    return {
        "reference": "quantized_pt2e" if dtype == "int8" else "eager",
        "blocks": rows,
        "max_abs_error": max((float(r["max_abs_error"]) for r in rows), default=0.0),  # type: ignore[arg-type]
        "max_error_steps": max(steps_all) if steps_all else None,
        "atol": GATE_FP32_ATOL,
        "min_cosine": GATE_FP32_MIN_COSINE,
        "max_abs": GATE_FP32_MAX_ABS,
        "max_steps": GATE_INT8_MAX_STEPS,
        "min_sqnr_db": GATE_INT8_MIN_SQNR_DB,
        "passed": bool(ok),
    }
