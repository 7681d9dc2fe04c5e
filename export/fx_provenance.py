"""torch.fx's node provenance without its quadratic copying, for the converters' pass pipelines.

Every FX pass that re-traces a graph under ``torch.fx.traceback.preserve_node_meta`` (ExecuTorch's
``ExportPass`` and each of XNNPACK's ~17 passes, torch.export's decompositions) records where each
new node came from in ``node.meta["from_node"]``: a :class:`torch.fx.traceback.NodeSource` whose
constructor *deep-copies* the source node's whole ``from_node`` history (torch 2.14). The history
grows by one level per pass, so a lowering spends time quadratic in its number of passes copying
records nobody edits. :func:`shared_provenance` makes the constructor share the history's
``NodeSource`` objects instead (a new list of the same records): the same provenance, the same
artifact bytes (tests/test_fx_provenance.py), and on MobileNetV3-Small-0.5 int8 (635 nodes) the
``.pte`` lowering took 46.3 s instead of 55.7 s on a 2-core AVX2 EPYC.

The records are never mutated after construction by torch, ExecuTorch or litert-torch (they are
read by ``NodeSource.to_dict`` / ``print_readable`` for debugging and provenance reports), so
sharing them cannot change what a reader sees.
"""

from __future__ import annotations

from typing import Any

from quantize.scoped_patch import ScopedPatch


def _shared_init(original: Any) -> Any:
    def init(self: Any, node: Any, pass_name: str = "", action: Any = None) -> None:
        meta = getattr(node, "meta", None)
        history = meta.get("from_node") if meta is not None else None
        if history is None:
            original(self, node, pass_name, action)
            return
        meta["from_node"] = []  # the original constructor deep-copies this; give it nothing to copy
        try:
            original(self, node, pass_name, action)
        finally:
            meta["from_node"] = history
        self.from_node = list(history)

    init.__wrapped__ = original  # type: ignore[attr-defined]
    return init


def _install() -> None:
    from torch.fx.traceback import NodeSource

    NodeSource.__init__ = _shared_init(NodeSource.__init__)  # type: ignore[method-assign]


def _remove() -> None:
    from torch.fx.traceback import NodeSource

    NodeSource.__init__ = NodeSource.__init__.__wrapped__  # type: ignore[attr-defined,method-assign]


_PATCH = ScopedPatch(_install, _remove)


def shared_provenance() -> ScopedPatch:
    """The patch to enter (``with``): ``NodeSource(node, ...)`` shares, not copies, the node's records."""
    return _PATCH
