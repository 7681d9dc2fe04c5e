"""Fidelity metrics of a quantised network against its float reference (pure functions, no I/O).

Conventions: ``ref`` is the float output, ``test`` the quantised one, both ``[N, ...]`` with the
batch first. SQNR (signal-to-quantisation-noise ratio) in dB is ``10 * log10(sum ref^2 / sum
(ref - test)^2)``: 20 dB means the error carries 1% of the signal's power, 30 dB 0.1%. The
*global* SQNR sums powers over every element of every image; a few images with very large
float logits dominate it, so the median and the worst per-image SQNR are reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from edge_se.tables import Column, percent

# A perfect match has infinite SQNR; JSON has no infinity, so it is capped at this many dB.
SQNR_CAP_DB = 200.0
_TINY = 1e-30


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().double()
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Global SQNR in dB over all elements (capped at :data:`SQNR_CAP_DB`).

    Raises:
        ValueError: when the shapes differ.
    """
    if ref.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {tuple(ref.shape)} vs test {tuple(test.shape)}")
    r, t = ref.detach().double(), test.detach().double()
    signal = float((r * r).sum())
    noise = float(((r - t) ** 2).sum())
    return _ratio_db(signal, noise)


def _ratio_db(signal: float, noise: float) -> float:
    if noise <= _TINY:
        return SQNR_CAP_DB
    if signal <= _TINY:
        return -SQNR_CAP_DB
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def per_sample_sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """SQNR in dB of each sample (row) ``[N]``."""
    r, t = _as_2d(ref), _as_2d(test)
    signal = (r * r).sum(1)
    noise = ((r - t) ** 2).sum(1)
    return torch.tensor([_ratio_db(float(s), float(n)) for s, n in zip(signal, noise, strict=True)])


def cosine(ref: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample (row) ``[N]``; 1.0 when both rows are zero."""
    r, t = _as_2d(ref), _as_2d(test)
    num = (r * t).sum(1)
    den = r.norm(dim=1) * t.norm(dim=1)
    both_zero = (r.norm(dim=1) == 0) & (t.norm(dim=1) == 0)
    cos = num / den.clamp_min(_TINY)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def top1_agreement(ref_logits: torch.Tensor, test_logits: torch.Tensor) -> float:
    """Fraction (0..1) of samples whose arg-max class is the same."""
    return float((ref_logits.argmax(1) == test_logits.argmax(1)).double().mean())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (0..1) against integer labels ``[N]``."""
    return float((logits.argmax(1) == labels).double().mean())


def logits_report(ref: torch.Tensor, test: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float | None]:
    """The output-level figures of the CLI contract for float logits ``ref`` and quantised ``test``.

    Returns:
        ``top1_agreement`` (0..1), ``cosine`` (mean over images), ``cosine_min``, ``sqnr_db``
        (global), ``sqnr_db_median``, ``sqnr_db_worst`` (per image), ``accuracy`` and
        ``float_accuracy`` (0..1, None without labels), ``images``.
    """
    per_image = per_sample_sqnr_db(ref, test)
    cos = cosine(ref, test)
    return {
        "images": int(ref.shape[0]),
        "top1_agreement": top1_agreement(ref, test),
        "cosine": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "sqnr_db": sqnr_db(ref, test),
        "sqnr_db_median": float(per_image.median()),
        "sqnr_db_worst": float(per_image.min()),
        "accuracy": accuracy(test, labels) if labels is not None else None,
        "float_accuracy": accuracy(ref, labels) if labels is not None else None,
    }


def gate_error(block: str, ref: torch.Tensor, test: torch.Tensor) -> dict[str, float | str]:
    """Error of one SE block's gate vectors ``[N, C]`` (float ``ref`` vs quantised ``test``).

    Returns:
        ``block``, ``mean_abs`` and ``max_abs`` (gate units, 0..1), ``cosine`` (mean over images),
        ``sqnr_db`` (global over the block's gates).
    """
    r, t = _as_2d(ref), _as_2d(test)
    diff = (r - t).abs()
    return {
        "block": block,
        "mean_abs": float(diff.mean()),
        "max_abs": float(diff.max()),
        "cosine": float(cosine(r, t).mean()),
        "sqnr_db": sqnr_db(r, t),
    }


def summarize_gate_errors(errors: Sequence[dict[str, float | str]]) -> dict[str, float | None]:
    """Worst (minimum) and median per-block gate SQNR in dB; None without SE blocks."""
    values = sorted(float(e["sqnr_db"]) for e in errors)
    if not values:
        return {"gate_sqnr_db_min": None, "gate_sqnr_db_median": None}
    return {"gate_sqnr_db_min": values[0], "gate_sqnr_db_median": values[len(values) // 2]}


def report_columns() -> list[Column]:
    """Table columns for :func:`logits_report`'s figures: logits SQNR, median, worst (dB), agreement, accuracy (%)."""
    return [Column("logits SQNR dB", "sqnr_db", ".1f", "right"), Column("median", "sqnr_db_median", ".1f", "right"),
            Column("worst", "sqnr_db_worst", ".1f", "right"), percent("top1_agreement"), percent("accuracy")]
