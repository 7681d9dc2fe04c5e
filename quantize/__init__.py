"""SE-aware int8 quantisation (PT2E) for ExecuTorch (XNNPACK) and TFLite (litert-torch).

The default policy (:data:`DEFAULT_POLICY`, ``gate-coverage``) and the numbers behind it are in
``quantize.policies`` and results/quant_bench.md (``make bench-quant``). The largest fidelity lever
measured was the training recipe's Linear init (``edge_se.train``), not a quantisation policy.

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

from quantize.core import ENGINES, QuantizedModel, export_graph, quantize_model
from quantize.policies import DEFAULT_POLICY, POLICIES, PolicyPlan, resolve_policy
from quantize.se_pattern import SEBlock, find_se_blocks

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
