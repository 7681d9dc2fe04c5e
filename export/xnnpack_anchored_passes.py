"""XNNPACK's passes that act on particular operators, run only on graphs that hold one of them.

ExecuTorch's XNNPACK preprocessing runs 17 passes on every lowered program, one after another, and
most of them end by re-tracing the whole program through fake tensors (``ExportPass.call``) whether
they changed anything or not: 1.9-2.4 s each on EfficientNet-B0's int8 graph (1,205 nodes) on a
2-core AVX2 EPYC, about 30 s of its 98 s export. Nine of them can only change a graph that holds
particular operators (:data:`ANCHORS`):

- ``ConvertToUpsampleBilinear2d`` and ``ConvertToSDPAPass`` rewrite subgraphs found by pattern; a
  match needs a node for every operator of the pattern, and every bilinear pattern holds
  ``aten.upsample_bilinear2d`` and every SDPA pattern ``aten._softmax`` (tests/test_xnnpack_anchored_passes.py
  traces the patterns and checks it). Their first call in a process also traces those patterns:
  5.2 s in every process that writes a ``.pte``.
- ``DimOrderOpsRevertPass`` rewrites only ``dim_order_ops`` nodes; ``FuseBatchNormPass`` and
  ``DecomposeBatchNorm`` only batch norms; ``DecomposeConcatenate`` only ``aten.cat``;
  ``RemoveGetItemPass`` only ``max_pool2d_with_indices`` and ``max.dim``; ``PReLUReshapePass`` only
  ``_prelu_kernel``; ``Conv1dUnsqueezePass`` only convolutions with a 3-D output (a 1-D convolution).

On a graph without its operator each of these passes returns at once. The passes that stay re-trace
the program after them, and the artifact is byte-identical with and without the skip (tested on the
tiny SE network and on a cut MobileNetV3 with batch norms; checked by hand on EfficientNet-B0 and
MobileNetV3-Small int8, below in docs/export.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantize.scoped_patch import ScopedPatch

_EDGE = "<EdgeOpOverload: "
_BATCH_NORM = (_EDGE + "aten.native_batch_norm.", _EDGE + "aten._native_batch_norm_legit_no_training.")

#: Pass class name -> the prefixes of ``str(node.target)`` it acts on (any one present: the pass runs).
ANCHORS: dict[str, tuple[str, ...]] = {
    "ConvertToUpsampleBilinear2d": (_EDGE + "aten.upsample_bilinear2d.",),
    "ConvertToSDPAPass": (_EDGE + "aten._softmax.default>",),
    "DimOrderOpsRevertPass": (_EDGE + "dim_order_ops.",),
    "FuseBatchNormPass": _BATCH_NORM,
    "DecomposeBatchNorm": _BATCH_NORM,
    "DecomposeConcatenate": (_EDGE + "aten.cat.default>",),
    "RemoveGetItemPass": (_EDGE + "aten.max_pool2d_with_indices.default>", _EDGE + "aten.max.dim>"),
    "PReLUReshapePass": (_EDGE + "aten._prelu_kernel.default>",),
    "Conv1dUnsqueezePass": (_EDGE + "aten.convolution.default>",),
}


def _nodes(graph_module: Any) -> list[Any]:
    modules = [graph_module, *(m for m in graph_module.modules() if m is not graph_module and hasattr(m, "graph"))]
    return [n for m in modules for n in m.graph.nodes if n.op == "call_function"]


def has_operator(graph_module: Any, anchors: str | tuple[str, ...]) -> bool:
    """Whether any ``call_function`` node of the graph (or of a submodule's graph) targets one of ``anchors``."""
    prefixes = (anchors,) if isinstance(anchors, str) else anchors
    return any(str(n.target).startswith(prefixes) for n in _nodes(graph_module))


def has_conv1d(graph_module: Any) -> bool:
    """Whether the graph holds a convolution whose output is 3-D (or whose shape is not recorded)."""
    conv = ANCHORS["Conv1dUnsqueezePass"]
    for n in _nodes(graph_module):
        if str(n.target).startswith(conv):
            val = n.meta.get("val")
            if getattr(val, "dim", None) is None or val.dim() == 3:
                return True
    return False


#: Pass class name -> the test that the graph holds something the pass acts on.
WANTED: dict[str, Callable[[Any], bool]] = {
    name: (has_conv1d if name == "Conv1dUnsqueezePass" else (lambda gm, a=anchors: has_operator(gm, a)))
    for name, anchors in ANCHORS.items()
}


def _guarded(original: Any, wanted: Callable[[Any], bool]) -> Any:
    def call(self: Any, graph_module: Any) -> Any:
        if wanted(graph_module):
            return original(self, graph_module)
        from torch.fx.passes.infra.pass_base import PassResult

        return PassResult(graph_module, False)

    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


def _classes() -> dict[str, Any]:
    from executorch.backends.transforms.remove_getitem_op import RemoveGetItemPass
    from executorch.backends.xnnpack._passes.conv1d_unsqueeze_pass import Conv1dUnsqueezePass
    from executorch.backends.xnnpack._passes.convert_to_sdpa import ConvertToSDPAPass
    from executorch.backends.xnnpack._passes.convert_to_upsample_bilinear2d import ConvertToUpsampleBilinear2d
    from executorch.backends.xnnpack._passes.decompose_batch_norm import DecomposeBatchNorm
    from executorch.backends.xnnpack._passes.decompose_cat import DecomposeConcatenate
    from executorch.backends.xnnpack._passes.fuse_batch_norm import FuseBatchNormPass
    from executorch.backends.xnnpack._passes.prelu_reshape_pass import PReLUReshapePass
    from executorch.exir.passes.memory_format_ops_pass import DimOrderOpsRevertPass

    classes = (ConvertToUpsampleBilinear2d, ConvertToSDPAPass, DimOrderOpsRevertPass, FuseBatchNormPass,
               DecomposeBatchNorm, DecomposeConcatenate, RemoveGetItemPass, PReLUReshapePass, Conv1dUnsqueezePass)
    return {cls.__name__: cls for cls in classes}


_INHERITED: set[str] = set()  # the passes whose ``call`` is their base class's (DimOrderOpsRevertPass)


def _install() -> None:
    for name, cls in _classes().items():
        if "call" not in vars(cls):
            _INHERITED.add(name)
        cls.call = _guarded(cls.call, WANTED[name])


def _remove() -> None:
    for name, cls in _classes().items():
        if name in _INHERITED:
            del cls.call  # back to the inherited one, as before
        else:
            cls.call = cls.call.__wrapped__
    _INHERITED.clear()


_PATCH = ScopedPatch(_install, _remove)


def anchored_passes_only() -> ScopedPatch:
    """The patch to enter (``with``): each pass of :data:`ANCHORS` returns at once on graphs without its operator."""
    return _PATCH
