"""edge-se: Squeeze-and-Excitation CNNs, their exact cost, and the way to the edge.

Example:
    >>> import edge_se
    >>> acc = edge_se.count(edge_se.get_spec("efficientnet_b0"))
    >>> acc.params, acc.macs, acc.se_blocks
    (5288548, 385814752, 16)
    >>> model = edge_se.build_model("efficientnet_b0")  # random weights; see edge_se.weights
"""

from __future__ import annotations

from edge_se.lazy import lazy_attributes

# Names -> the module that defines them, imported on first use (PEP 562): ``import edge_se`` stays
# light (no torch), so the CLI answers ``--help`` at once and torch-free code can import the package.
_LAZY = {
    "Accounting": "edge_se.accounting", "LayerCount": "edge_se.accounting", "count": "edge_se.accounting",
    "SqueezeExcite": "edge_se.blocks", "EdgeSENet": "edge_se.network", "build": "edge_se.network",
    "EdgeSeError": "edge_se.errors", "efficientnet_phi": "edge_se.families",
    "capture_gates": "edge_se.gates", "se_modules": "edge_se.gates",
    "build_model": "edge_se.registry", "check_resolution": "edge_se.registry", "get_spec": "edge_se.registry",
    "list_models": "edge_se.registry", "register": "edge_se.registry",
    "ArchSpec": "edge_se.specs", "SESpec": "edge_se.specs", "StageSpec": "edge_se.specs",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

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
