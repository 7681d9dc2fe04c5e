"""SE-aware int8 quantisation (PT2E) for ExecuTorch (XNNPACK) and TFLite (litert-torch).

The default policy (:data:`DEFAULT_POLICY`) is plain ``ptq``: a default must never be worse than
plain PTQ, and no SE-aware policy (``gate-coverage``, ``gate-fixed``, ...) beat it everywhere; the
numbers are in ``quantize.policies`` and results/quant_bench.md (``make bench-quant``). The
largest fidelity lever measured was the training recipe's Linear init (``edge_se.train``), not a quantisation policy.

Example:
    >>> import torch, edge_se
    >>> from quantize import quantize_model
    >>> model = edge_se.build_model("mobilenetv3_small_100", num_classes=10).eval()
    >>> calib = [torch.randn(8, 3, 64, 64)]
    >>> qm = quantize_model(model, (calib[0][:1],), calib, target="pte", policy="ptq")
    >>> [b.name for b in qm.se_blocks][:2], qm.calibration["selection"]
    (['blocks.0.se', 'blocks.3.se'], 'random')
"""

from __future__ import annotations

from edge_se.lazy import lazy_attributes

# Imported on first use (PEP 562): the CLI reads the policy and engine names without torch.
_LAZY = {
    "ENGINES": "quantize.policies", "QuantizedModel": "quantize.core", "export_graph": "quantize.core",
    "quantize_model": "quantize.core", "DEFAULT_POLICY": "quantize.policies", "POLICIES": "quantize.policies",
    "PolicyPlan": "quantize.policies", "resolve_policy": "quantize.policies", "SEBlock": "quantize.se_pattern",
    "find_se_blocks": "quantize.se_pattern",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "DEFAULT_POLICY",
    "ENGINES",
    "POLICIES",
    "PolicyPlan",
    "QuantizedModel",
    "SEBlock",
    "export_graph",
    "find_se_blocks",
    "quantize_model",
    "resolve_policy",
]
