"""Out-of-distribution score from SE gate vectors, evaluated on the device.

Runs on the device next to :mod:`device_bench.runner`: numpy and the standard library only
(no torch, no ``edge_se``). The statistics are fitted on the host by :mod:`studies.anomaly`
and travel as one small JSON-able dict (schema :data:`STATS_SCHEMA`, docs/anomaly.md).

Method ``"ppca-mahalanobis"`` (the only one so far): for each SE block ``b`` with gates
``g`` in ``R^C``, the fitted covariance is a Ledoit-Wolf shrunk sample covariance, kept in
probabilistic-PCA form ``S = V diag(lam) V^T + sigma2 (I - V V^T)``: the ``k`` leading
eigenvectors ``V`` [C, k], their eigenvalues ``lam`` [k], and the mean ``sigma2`` of the
remaining ``C - k`` eigenvalues. The block distance is the exact Mahalanobis distance under
``S``::

    r = g - mean;  p = V^T r
    d_b = sqrt( sum_j p_j^2 / lam_j + (|r|^2 - |p|^2) / sigma2 )

With ``k == C`` this is the plain shrunk-covariance Mahalanobis distance. Why this form: a
full inverse covariance of MobileNetV3-Small's 576-channel blocks is 330k numbers per block
(several MB of JSON); ``C*k`` numbers with ``k = 32`` keep the whole file well under 2 MB
while the residual term still sees energy outside the principal subspace.

Blocks are combined by first standardising each block distance with the mean and standard
deviation it had on the fitting images, ``z_b = (d_b - norm_mean_b) / norm_std_b``, then
(``combine``) taking the largest, ``score = max_b z_b`` (``"max-z"``, what :mod:`device_bench.gate_fit`
fits by default: the most surprised block decides), or summing them, ``score = sum_b z_b``
(``"sum-z"``). Why max: on the digits model the early blocks separate noise, photos and blurring
almost perfectly on their own while the late ones barely do; a sum lets the many weak blocks
dilute the strong one, and int8 rounding, which hurts the weak blocks' separation most, then moves
the sum (results/anomaly_device.md measures both). Higher is more anomalous; ``flag`` marks scores
above the fitted ``threshold``.

Example:
    >>> import numpy as np
    >>> stats = {"schema": STATS_SCHEMA, "method": "ppca-mahalanobis", "combine": "sum-z",
    ...          "threshold": 1.0, "blocks": [{"name": "se", "channels": 2, "mean": [0.0, 0.0],
    ...          "components": [[1.0], [0.0]], "eigenvalues": [4.0], "residual_variance": 1.0,
    ...          "norm_mean": 0.0, "norm_std": 1.0}]}
    >>> score([np.array([[2.0, 0.0], [0.0, 3.0]])], stats).tolist()
    [1.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

STATS_SCHEMA = "edge-se/gate-stats/1"
METHODS = ("ppca-mahalanobis",)
COMBINES = ("max-z", "sum-z")

#: Keys every stats dict carries at the top level.
TOP_KEYS = ("schema", "method", "blocks", "combine", "threshold")
#: Keys every entry of ``stats["blocks"]`` carries.
BLOCK_KEYS = ("name", "channels", "mean", "components", "eigenvalues", "residual_variance", "norm_mean", "norm_std")


def gate_arrays(outputs: Sequence[np.ndarray], slots: Sequence[Mapping[str, Any]], *,
                quant: Sequence[tuple[float | None, int | None]] | None = None) -> dict[str, np.ndarray]:
    """``{block name: gates [N, C] float64}`` read from an artifact's outputs by the manifest's slots.

    Args:
        outputs: the artifact's outputs of one inference (or a batch), output 0 the logits.
        slots: the manifest's ``gate_outputs.blocks``: ``name``, ``channels``, ``output_index`` and
            ``offset`` (channels into that output, flattened; absent in older manifests: 0).
        quant: per output, its ``(scale, zero_point)``; an integer output with a scale is dequantised.

    Raises:
        ValueError: a slot names an output the artifact lacks, or lies outside it.
    """
    gates: dict[str, np.ndarray] = {}
    for slot in slots:
        i, c, off = int(slot["output_index"]), int(slot["channels"]), int(slot.get("offset", 0))
        if i >= len(outputs):
            raise ValueError(f"no output {i} for SE block {slot['name']!r} (the artifact has {len(outputs)} outputs)")
        a = np.asarray(outputs[i])
        scale, zero = quant[i] if quant is not None and i < len(quant) else (None, None)
        flat = a.reshape(a.shape[0], -1)
        if off + c > flat.shape[1]:
            raise ValueError(f"SE block {slot['name']!r}: channels {off}..{off + c} lie outside output {i} "
                             f"({flat.shape[1]} values)")
        g = flat[:, off : off + c]
        if scale is not None and a.dtype.kind in "iu":
            g = (g.astype(np.float64) - float(zero or 0)) * float(scale)
        gates[str(slot["name"])] = g.astype(np.float64)
    return gates


def stacked_gate_arrays(runs: Sequence[Sequence[np.ndarray]], slots: Sequence[Mapping[str, Any]], *,
                        quant: Sequence[tuple[float | None, int | None]] | None = None) -> dict[str, np.ndarray]:
    """``{block name: gates [N, C] float64}`` of N inferences (``runs``: each one's outputs), as :func:`gate_arrays`."""
    per = [gate_arrays(r, slots, quant=quant) for r in runs]
    return {str(s["name"]): np.concatenate([g[str(s["name"])] for g in per]) for s in slots}


def check_stats(stats: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` saying what is wrong if ``stats`` is not a usable gate-stats dict."""
    if not isinstance(stats, Mapping):
        raise ValueError(f"gate stats must be a JSON object, got {type(stats).__name__}")
    if stats.get("schema") != STATS_SCHEMA:
        raise ValueError(f"gate stats schema is {stats.get('schema')!r}; expected {STATS_SCHEMA!r}")
    missing = [k for k in TOP_KEYS if k not in stats]
    if missing:
        raise ValueError(f"gate stats lack {', '.join(missing)}")
    if stats["method"] not in METHODS:
        raise ValueError(f"unknown gate-stats method {stats['method']!r}; valid: {', '.join(METHODS)}")
    if stats["combine"] not in COMBINES:
        raise ValueError(f"unknown gate-stats combine {stats['combine']!r}; valid: {', '.join(COMBINES)}")
    blocks = stats["blocks"]
    if not isinstance(blocks, Sequence) or not blocks:
        raise ValueError("gate stats have no blocks")
    for i, block in enumerate(blocks):
        if not isinstance(block, Mapping):
            raise ValueError(f"gate stats block {i} is not an object")
        lack = [k for k in BLOCK_KEYS if k not in block]
        if lack:
            raise ValueError(f"gate stats block {i} ({block.get('name')!r}) lacks {', '.join(lack)}")


def block_distance(gates: np.ndarray, block: Mapping[str, Any]) -> np.ndarray:
    """Mahalanobis distance (in standard deviations) of each row of ``gates`` [N, C] to one block's fit."""
    x = np.asarray(gates, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)  # [N, C, 1, 1] -> [N, C]
    channels = int(block["channels"])
    if x.shape[1] != channels:
        raise ValueError(f"block {block['name']!r}: gates have {x.shape[1]} channels, the stats were fitted "
                         f"for {channels}")
    r = x - np.asarray(block["mean"], dtype=np.float64)
    v = np.asarray(block["components"], dtype=np.float64).reshape(channels, -1)
    lam = np.asarray(block["eigenvalues"], dtype=np.float64)
    p = r @ v
    d2 = (p * p / lam).sum(axis=1)
    if v.shape[1] < channels:
        resid = np.maximum((r * r).sum(axis=1) - (p * p).sum(axis=1), 0.0)  # clip rounding below zero
        d2 = d2 + resid / float(block["residual_variance"])
    return np.sqrt(d2)


def block_distances(gates: Sequence[np.ndarray], stats: Mapping[str, Any]) -> np.ndarray:
    """Per-block distances [N, B] of ``gates`` (one array per block, in ``stats["blocks"]`` order)."""
    check_stats(stats)
    blocks = stats["blocks"]
    if len(gates) != len(blocks):
        raise ValueError(f"got gates of {len(gates)} SE blocks; the stats were fitted for {len(blocks)}")
    sizes = {np.asarray(g).shape[0] for g in gates}
    if len(sizes) != 1:
        raise ValueError(f"gate arrays disagree on the number of images: {sorted(sizes)}")
    return np.stack([block_distance(g, b) for g, b in zip(gates, blocks, strict=True)], axis=1)


def combine(distances: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """One score [N] from per-block distances [N, B]: the max (``max-z``) or sum (``sum-z``) of their z-scores."""
    mean = np.array([float(b["norm_mean"]) for b in stats["blocks"]])
    std = np.array([float(b["norm_std"]) for b in stats["blocks"]])
    z = (distances - mean) / std
    if stats["combine"] == "max-z":
        return z.max(axis=1)
    return z.sum(axis=1)


def score(gates: Sequence[np.ndarray], stats: Mapping[str, Any]) -> np.ndarray:
    """Anomaly score (float64 [N], higher = more anomalous) of gate vectors, one array [N, C_b] per SE block."""
    return combine(block_distances(gates, stats), stats).astype(np.float64)


def flag(scores: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Boolean [N]: which scores lie above ``stats["threshold"]`` (flagged as out of distribution)."""
    return np.asarray(scores, dtype=np.float64) > float(stats["threshold"])
