"""Fit the SE-gate out-of-distribution score on the host, and the metrics that judge it.

The score itself (:func:`device_bench.gate_score.score`) is numpy-only and runs on the device; this
module reads gate vectors off a float model (:func:`gate_vectors`), fits the statistics it needs
(:func:`fit`, schema ``edge-se/gate-stats/1``, docs/anomaly.md), and scores the result against the
standard baseline, maximum softmax probability (:func:`max_softmax_score`).

Fitting (:func:`fit`, method ``ppca-mahalanobis``) lives in :mod:`device_bench.gate_fit` (numpy
only, so the same fit runs on an artifact's own gates, ``edge-se export --gate-fit``) and is
re-exported here; its docstring gives the method.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> round(auroc(rng.normal(0, 1, 2000), rng.normal(2, 1, 2000)), 1)  # analytic: Phi(2 / sqrt(2)) = 0.92
    0.9
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from device_bench.gate_fit import DEFAULT_COMPONENTS, DEFAULT_FPR, DEFAULT_HOLDOUT, fit, fit_block
from device_bench.gate_score import score


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve with OOD the positive class: P(ood > id) + P(ood == id) / 2.

    Rank-based (Mann-Whitney U with mid-ranks), so ties count half. 1.0: every OOD score above
    every in-distribution one; 0.5: chance.
    """
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("auroc needs at least one in-distribution and one OOD score")
    values, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last element of each tie group
    mid = upper - (counts - 1) / 2.0
    rank_sum = mid[inverse[len(a):]].sum()
    u = rank_sum - len(b) * (len(b) + 1) / 2.0
    return float(u / (len(a) * len(b)))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of in-distribution scores flagged at the highest threshold that flags >= ``tpr`` of the OOD ones.

    A score is flagged when it is >= the threshold, so in-distribution scores tied with the
    threshold count as false positives.
    """
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.sort(np.asarray(ood_scores, dtype=np.float64).ravel())[::-1]
    if len(a) == 0 or len(b) == 0:
        raise ValueError("fpr_at_tpr needs at least one in-distribution and one OOD score")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr {tpr!r} must lie in (0, 1]")
    k = int(np.ceil(tpr * len(b) - 1e-9))  # OOD images that must be flagged
    threshold = b[max(k, 1) - 1]
    return float((a >= threshold).mean())


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """Baseline score [N] of Hendrycks & Gimpel (2017): ``1 - max softmax``, higher = more anomalous."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return 1.0 - p.max(axis=1) / p.sum(axis=1)


def forward(model: Any, images: Any, *, batch_size: int = 256) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Gate vectors ``{se_path: [N, C]}`` and logits [N, K] of the float ``model`` (eval mode) on ``images``."""
    import torch

    from edge_se.gates import capture_gates

    model.eval()
    logits = []
    with torch.no_grad(), capture_gates(model) as gates:
        for start in range(0, len(images), batch_size):
            logits.append(model(images[start : start + batch_size]))
    return {k: v.numpy().astype(np.float64) for k, v in gates.items()}, torch.cat(logits).double().numpy()


def gate_vectors(model: Any, images: Any, *, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Gate vectors ``{se_path: float64 [N, C]}`` of every SE block of ``model``, in forward order."""
    return forward(model, images, batch_size=batch_size)[0]


def gate_score(gates: Mapping[str, np.ndarray], stats: Mapping[str, Any]) -> np.ndarray:
    """:func:`device_bench.gate_score.score` of ``{se_path: gates}``, checking the paths match the stats."""
    names = [b["name"] for b in stats["blocks"]]
    if list(gates) != names:
        raise ValueError(f"the model's SE blocks {list(gates)} are not those the stats were fitted for {names}")
    return score([gates[n] for n in names], stats)


def evaluate(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """``{"auroc", "fpr_at_95tpr"}`` of one score on one in-distribution/OOD pair."""
    return {"auroc": auroc(id_scores, ood_scores), "fpr_at_95tpr": fpr_at_tpr(id_scores, ood_scores, 0.95)}


def evaluate_sets(model: Any, stats: Mapping[str, Any], id_images: Any, sets: Mapping[str, Any], *,
                  batch_size: int = 256) -> list[dict[str, Any]]:
    """One row per OOD set: AUROC and FPR@95%TPR of the gate score and of max-softmax, vs ``id_images``.

    Row keys: ``ood``, ``images`` (OOD images), ``id_images``, ``gate_auroc``, ``gate_fpr_at_95tpr``,
    ``gate_flagged`` (share of the OOD set above the threshold), ``msp_auroc``,
    ``msp_fpr_at_95tpr``; the first row, ``ood = "(in-distribution)"``, gives ``gate_flagged`` on
    ``id_images`` (the realised false-positive rate) and no AUROC.
    """
    from device_bench.gate_score import flag

    id_gates, id_logits = forward(model, id_images, batch_size=batch_size)
    id_gate, id_msp = gate_score(id_gates, stats), max_softmax_score(id_logits)
    rows: list[dict[str, Any]] = [{"ood": "(in-distribution)", "images": len(id_gate), "id_images": len(id_gate),
                                   "gate_flagged": float(flag(id_gate, stats).mean())}]
    for name, images in sets.items():
        gates, logits = forward(model, images, batch_size=batch_size)
        g, m = gate_score(gates, stats), max_softmax_score(logits)
        eg, em = evaluate(id_gate, g), evaluate(id_msp, m)
        rows.append({"ood": name, "images": len(g), "id_images": len(id_gate), "gate_auroc": eg["auroc"],
                     "gate_fpr_at_95tpr": eg["fpr_at_95tpr"], "gate_flagged": float(flag(g, stats).mean()),
                     "msp_auroc": em["auroc"], "msp_fpr_at_95tpr": em["fpr_at_95tpr"]})
    return rows


__all__ = ["DEFAULT_COMPONENTS", "DEFAULT_FPR", "DEFAULT_HOLDOUT", "auroc", "evaluate", "evaluate_sets", "fit",
           "fit_block", "forward", "fpr_at_tpr", "gate_score", "gate_vectors", "max_softmax_score"]
