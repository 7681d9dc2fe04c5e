"""Fit the SE-gate anomaly statistics (``edge-se/gate-stats/1``) from gate vectors: numpy only.

Numpy and the standard library only, like :mod:`device_bench.gate_score` beside it, so the fit
can run wherever gates are read: on the host from a float model (:mod:`studies.anomaly`), from an
artifact's own gate outputs in its runtime (``edge-se export --gate-fit``: the statistics of the
gates the device will actually produce, int8 rounding included), or on the board itself.

Fitting (method ``ppca-mahalanobis``): the training split's gates are divided at random into a
*fit* part (``1 - holdout``) and a *calibration* part (``holdout``, default 20%). Per SE block the
fit part gives the mean and a Ledoit-Wolf shrunk covariance (shrunk towards ``mu I`` with the
closed-form optimal intensity of Ledoit & Wolf 2004, :func:`ledoit_wolf`; the same figures as
:func:`sklearn.covariance.ledoit_wolf`, tested), kept as its ``components`` leading eigenpairs plus
the mean of the other eigenvalues. The calibration part, never seen by the covariance, gives each
block distance's mean and standard deviation (for the ``sum-z`` combination) and the threshold:
the ``1 - fpr`` quantile of its scores. In-sample Mahalanobis distances are biased low when
channels (up to 576) are comparable to images (~1150); the split keeps the threshold free of that
bias by construction (docs/anomaly.md).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stats = fit({"se": rng.normal(size=(500, 4))}, fpr=0.05)
    >>> stats["schema"], stats["blocks"][0]["channels"], round(stats["fpr"], 2)
    ('edge-se/gate-stats/1', 4, 0.05)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from device_bench import gate_score
from device_bench.gate_score import COMBINES, STATS_SCHEMA, block_distances

DEFAULT_METHOD = "ppca-mahalanobis"
#: How block distances are combined (:data:`device_bench.gate_score.COMBINES`).
DEFAULT_COMBINE = "max-z"
#: Principal components kept per block: 9 MobileNetV3-Small blocks (2,296 channels) x 33 numbers
#: a channel is ~76k numbers, ~0.9 MB of JSON at :data:`DIGITS` significant digits.
DEFAULT_COMPONENTS = 32
DEFAULT_HOLDOUT = 0.2
DEFAULT_FPR = 0.05
#: Significant digits kept in the stats (float32 has ~7): the dict fit returns is already rounded,
#: so a JSON round trip changes nothing.
DIGITS = 8
#: Eigenvalues are floored at this share of the block's largest one: hard-sigmoid gates can be
#: exactly 0 or 1 on every fitting image, and shrinkage alone leaves such a direction at ``mu``.
EIGEN_FLOOR = 1e-6


def _round(values: np.ndarray) -> list:
    """Nested lists of ``values`` rounded to :data:`DIGITS` significant digits (JSON-able floats)."""
    return np.vectorize(lambda v: float(f"{v:.{DIGITS}g}"), otypes=[float])(np.asarray(values)).tolist()


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance ``[C, C]`` of centred rows ``x`` [N, C] and its shrinkage in [0, 1].

    ``(1 - s) S + s mu I`` with ``S = x^T x / N``, ``mu = trace(S) / C`` and the closed-form
    intensity ``s = min(beta, delta) / delta`` of Ledoit & Wolf (2004), as scikit-learn computes it
    (``ledoit_wolf(x, assume_centered=True)``), without its blocking.
    """
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    emp = x.T @ x / n
    if c == 1:
        return emp, 0.0
    x2 = x * x
    trace = x2.sum(axis=0) / n
    mu = float(trace.sum()) / c
    beta_ = float((x2.T @ x2).sum())
    delta_ = float(((x.T @ x) ** 2).sum()) / n**2
    beta = (beta_ / n - delta_) / (c * n)
    delta = (delta_ - 2.0 * mu * float(trace.sum()) + c * mu**2) / c
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    return (1.0 - shrinkage) * emp + shrinkage * mu * np.eye(c), float(shrinkage)


def fit_block(name: str, gates: np.ndarray, *, components: int = DEFAULT_COMPONENTS) -> dict[str, Any]:
    """One block's mean and PPCA form of its Ledoit-Wolf shrunk covariance (``norm_*`` filled by :func:`fit`)."""
    x = np.asarray(gates, dtype=np.float64).reshape(len(gates), -1)
    channels = x.shape[1]
    mean = x.mean(axis=0)
    cov, shrinkage = ledoit_wolf(x - mean)
    lam, vec = np.linalg.eigh(cov)  # ascending
    lam, vec = lam[::-1], vec[:, ::-1]
    lam = np.maximum(lam, EIGEN_FLOOR * max(float(lam[0]), 1e-12))
    k = min(components, channels)
    residual = float(lam[k:].mean()) if k < channels else 1.0  # unused when k == channels
    return {"name": name, "channels": channels, "mean": _round(mean), "components": _round(vec[:, :k]),
            "eigenvalues": _round(lam[:k]), "residual_variance": _round(np.array(residual)),
            "shrinkage": round(float(shrinkage), 6), "norm_mean": 0.0, "norm_std": 1.0}


def fit(gates: Mapping[str, np.ndarray], *, fpr: float = DEFAULT_FPR, method: str = DEFAULT_METHOD,
        combine: str = DEFAULT_COMBINE,
        components: int = DEFAULT_COMPONENTS, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
        source: str = "") -> dict[str, Any]:
    """Fit gate statistics on in-distribution gate vectors ``{se_path: [N, C]}`` (forward order).

    Args:
        gates: training-split gate vectors, one array per SE block, all with the same N.
        fpr: share of in-distribution images the threshold may flag (0 < fpr < 1).
        method: ``ppca-mahalanobis`` (module docstring).
        combine: ``max-z`` or ``sum-z`` (:func:`device_bench.gate_score.combine`).
        components: principal components kept per block.
        holdout: share of the images kept out of the covariance fit to calibrate the block
            normalisation and the threshold.
        seed: seeds the fit/calibration split.
        source: what the images were (recorded as ``source``).

    Returns:
        The JSON-able stats dict of :mod:`device_bench.gate_score`.

    Raises:
        ValueError: no blocks, mismatched image counts, too few images, a bad ``fpr``/``method``.
    """
    if method != "ppca-mahalanobis":
        raise ValueError(f"unknown method {method!r}; valid: ppca-mahalanobis")
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr {fpr!r} must lie strictly between 0 and 1")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout {holdout!r} must lie strictly between 0 and 1")
    if not gates:
        raise ValueError("no gate vectors to fit (does the model have SE blocks?)")
    counts = {len(g) for g in gates.values()}
    if len(counts) != 1:
        raise ValueError(f"gate arrays disagree on the number of images: {sorted(counts)}")
    n = counts.pop()
    n_cal = int(round(n * holdout))
    if n_cal < 10 or n - n_cal < 10:
        raise ValueError(f"{n} images are too few to fit and calibrate (need >= 10 in each part)")
    order = np.random.default_rng(seed).permutation(n)
    fit_idx, cal_idx = order[n_cal:], order[:n_cal]
    blocks = [fit_block(name, np.asarray(g)[fit_idx], components=components) for name, g in gates.items()]
    stats: dict[str, Any] = {"schema": STATS_SCHEMA, "method": method, "blocks": blocks, "combine": combine,
                             "threshold": 0.0, "fpr": fpr, "fit_images": int(len(fit_idx)),
                             "calibration_images": int(n_cal), "components": components, "seed": seed,
                             "source": source}
    cal = [np.asarray(g)[cal_idx] for g in gates.values()]
    dist = block_distances(cal, stats)
    for b, col in zip(blocks, dist.T, strict=True):
        b["norm_mean"] = _round(np.array(col.mean()))
        b["norm_std"] = _round(np.array(max(float(col.std()), 1e-12)))
    stats["threshold"] = _round(np.array(np.quantile(gate_score.combine(dist, stats), 1.0 - fpr)))
    return stats


__all__ = ["DEFAULT_COMBINE", "DEFAULT_COMPONENTS", "DEFAULT_FPR", "DEFAULT_HOLDOUT", "DEFAULT_METHOD", "fit",
           "fit_block", "ledoit_wolf"]
