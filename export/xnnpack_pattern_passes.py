"""XNNPACK's two pattern-rewrite passes, run only on graphs their patterns can match.

ExecuTorch's XNNPACK preprocessing runs 17 passes on every lowered program. Two of them rewrite
subgraphs found by pattern: ``ConvertToUpsampleBilinear2d`` and ``ConvertToSDPAPass``. The first
call in a process traces their pattern graphs (two ``torch.export`` + ``to_edge`` per bilinear
variant, and the SDPA variants): 5.2 s on a 2-core AVX2 EPYC, in every ``edge-se export`` process
that writes a ``.pte``; then each lowering re-traces the whole program after each of them.

A subgraph match needs a node of the graph for every operator of the pattern. Every bilinear
pattern holds ``aten.upsample_bilinear2d.vec`` and every SDPA pattern ``aten._softmax.default``
(:data:`ANCHORS`; tests/test_xnnpack_pattern_passes.py traces the patterns and checks it), so on a
graph with no such node the pass cannot change anything and is skipped. No SE network edge-se
builds has either operator; the artifact is byte-identical with and without the skip.
"""

from __future__ import annotations

from typing import Any

from quantize.scoped_patch import ScopedPatch

#: Pass class name -> the edge operator every one of its patterns contains (by ``str(target)`` prefix).
ANCHORS = {
    "ConvertToUpsampleBilinear2d": "<EdgeOpOverload: aten.upsample_bilinear2d.",
    "ConvertToSDPAPass": "<EdgeOpOverload: aten._softmax.default>",
}


def has_operator(graph_module: Any, anchor: str) -> bool:
    """Whether any ``call_function`` node of the graph (or of a submodule's graph) targets ``anchor``."""
    modules = [graph_module, *(m for m in graph_module.modules() if m is not graph_module and hasattr(m, "graph"))]
    return any(n.op == "call_function" and str(n.target).startswith(anchor)
               for m in modules for n in m.graph.nodes)


def _guarded(original: Any, anchor: str) -> Any:
    def call(self: Any, graph_module: Any) -> Any:
        if has_operator(graph_module, anchor):
            return original(self, graph_module)
        from torch.fx.passes.infra.pass_base import PassResult

        return PassResult(graph_module, False)

    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


def _classes() -> dict[str, Any]:
    from executorch.backends.xnnpack._passes.convert_to_sdpa import ConvertToSDPAPass
    from executorch.backends.xnnpack._passes.convert_to_upsample_bilinear2d import ConvertToUpsampleBilinear2d

    return {"ConvertToUpsampleBilinear2d": ConvertToUpsampleBilinear2d, "ConvertToSDPAPass": ConvertToSDPAPass}


def _install() -> None:
    for name, cls in _classes().items():
        cls.call = _guarded(cls.call, ANCHORS[name])


def _remove() -> None:
    for cls in _classes().values():
        cls.call = cls.call.__wrapped__


_PATCH = ScopedPatch(_install, _remove)


def matching_pattern_passes_only() -> ScopedPatch:
    """The patch to enter (``with``): the two pattern passes return at once on graphs without their anchor."""
    return _PATCH
