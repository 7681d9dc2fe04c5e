"""Fidelity of a :class:`~quantize.core.QuantizedModel` against its float reference, on images."""

from __future__ import annotations

import torch

from quantize.capture import run_graph
from quantize.core import QuantizedModel
from quantize.metrics import gate_error, logits_report, summarize_gate_errors


def evaluate(qm: QuantizedModel, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """Output and per-SE-block figures of ``qm.graph`` against ``qm.reference`` on ``images``.

    Returns:
        :func:`~quantize.metrics.logits_report`'s keys, plus ``gate_error`` (one record per SE
        block: ``block``, ``mean_abs``, ``max_abs``, ``cosine``, ``sqnr_db``) and the minimum /
        median gate SQNR.

    Raises:
        ValueError: ``qm`` has no float reference graph.
    """
    if qm.reference is None:
        raise ValueError("this QuantizedModel has no float reference graph to compare with")
    ref_logits, ref_gates = run_graph(qm.reference, images, qm.se_blocks)
    logits, gates = run_graph(qm.graph, images, qm.se_blocks)
    errors = [gate_error(b.name, ref_gates[b.name], gates[b.name]) for b in qm.se_blocks]
    return {**logits_report(ref_logits, logits, labels), **summarize_gate_errors(errors), "gate_error": errors}
