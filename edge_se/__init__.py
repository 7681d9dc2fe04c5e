"""edge-se: Squeeze-and-Excitation CNNs, their exact cost, and the way to the edge.

Example:
    >>> import edge_se
    >>> acc = edge_se.count(edge_se.get_spec("efficientnet_b0"))
    >>> acc.params, acc.macs, acc.se_blocks
    (5288548, 385814752, 16)
    >>> model = edge_se.build_model("efficientnet_b0")  # random weights; see edge_se.weights
"""

from __future__ import annotations

from edge_se.accounting import Accounting, LayerCount, count
from edge_se.blocks import SqueezeExcite
from edge_se.build import EdgeSENet, build
from edge_se.errors import EdgeSeError
from edge_se.families import efficientnet_phi
from edge_se.gates import capture_gates, se_modules
from edge_se.registry import build_model, check_resolution, get_spec, list_models, register
from edge_se.specs import ArchSpec, SESpec, StageSpec

__version__ = "0.1.0"

__all__ = [
    "Accounting",
    "ArchSpec",
    "EdgeSENet",
    "EdgeSeError",
    "LayerCount",
    "SESpec",
    "SqueezeExcite",
    "StageSpec",
    "build",
    "build_model",
    "capture_gates",
    "check_resolution",
    "count",
    "efficientnet_phi",
    "get_spec",
    "list_models",
    "register",
    "se_modules",
]
