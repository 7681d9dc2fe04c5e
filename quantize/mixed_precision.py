"""Mixed precision, the last resort: the k int8 tensors that cost the most kept fp32 (``--policy float-sensitive``).

Which tensors: the quantised activations of the plain int8 graph (the recipe's other aspects
applied) ranked by their own grid's cost, :mod:`quantize.diagnose`'s ``sqnr_db_isolated`` (the
float tensor through its own quantize/dequantize pair, everything else float), lowest first, on
images held back from calibration. One pass of the float graph ranks every tensor; no layer is
quantised twice to rank it.

What "kept fp32" means for one tensor ``T``: a PT2E quantizer puts a quantize/dequantize pair on
``T`` when its producer annotates an output spec *or* any consumer asks for a quantised input. So
both go fp32: the node producing ``T`` and every node reading it (:func:`tensor_float_nodes`). A
convolution among them keeps its weights fp32 too; the tensors around the island stay int8 (one
quantize where the island ends). That is the smallest edit that takes ``T`` off the int8 grid,
and it lowers like the SE islands and the float prefix do: an fp32 operator inside the XNNPACK
delegate or the LiteRT graph, dequantize / quantize at its edges.

Why a last resort: every fp32 island costs latency (fp32 kernels, the conversions at its edges)
and bytes (fp32 weights), and on networks whose int8 error is spread over the graph (``edge-se
diagnose`` on timm's EfficientNet-B0: the median tensor 33 dB isolated, no layer dominating) a few
islands recover little. The manifest records what was kept (``quantization.float_layers``); the
latency cost is the artifact's, measured by ``edge-se bench`` beside plain int8.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from torch.fx import GraphModule

from edge_se.errors import EdgeSeError
from quantize.diagnose import LayerFidelity


@dataclass(frozen=True)
class FloatLayers:
    """The tensors ``float-sensitive`` took off the int8 grid, and the operators that became fp32.

    Attributes:
        tensors: ``(name, sqnr_db_isolated, op)`` of each tensor kept fp32, most costly first (dB on
            the ranking images, in the graph the ranking quantised).
        nodes: names of the operators kept fp32 (graph order).
        images: how many images ranked them.
    """

    tensors: tuple[tuple[str, float, str], ...]
    nodes: tuple[str, ...]
    images: int

    def record(self) -> dict[str, object]:
        """What the manifest's ``quantization.float_layers`` holds."""
        return {"count": len(self.tensors),
                "tensors": [{"name": n, "sqnr_db_isolated": round(s, 2), "op": op} for n, s, op in self.tensors],
                "fp32_nodes": list(self.nodes), "ranked_on_images": self.images,
                "ranking": "diagnose sqnr_db_isolated, lowest first"}


def tensor_float_nodes(gm: GraphModule, name: str, quantized: Collection[str]) -> list[str]:
    """The operators that must stay fp32 for tensor ``name`` of ``gm`` to leave the int8 grid.

    Its producer and every reader; and upstream of the producer, each input that was *not* on a
    grid (``quantized``: the int8 graph's quantised tensors) and that only the producer reads, with
    its own producer, and so on: a quantizer that annotates ``conv -> relu`` as one pattern
    quantises the ReLU's output only, and with the ReLU fp32 alone it would quantise the
    convolution's output instead, the same values on the same coarse grid. A graph input has no
    producing operator: only its readers.

    Raises:
        EdgeSeError: no node of that name in ``gm``.
    """
    node = next((n for n in gm.graph.nodes if n.name == name), None)
    if node is None:
        raise EdgeSeError(f"float-sensitive: tensor {name!r} is not in the graph the quantizer annotates")
    out = [u.name for u in node.users if u.op == "call_function"]
    frontier = [node] if node.op == "call_function" else []
    while frontier:
        producer = frontier.pop()
        out.append(producer.name)
        frontier += [i for i in producer.all_input_nodes
                     if i.op == "call_function" and i.name not in quantized and len(i.users) == 1]
    return out


def choose(layers: Sequence[LayerFidelity], gm: GraphModule, k: int, *, images: int) -> FloatLayers:
    """The ``k`` costliest tensors of ``layers`` (lowest ``sqnr_db_isolated``) and the fp32 operators they need.

    A tensor already off the grid through an earlier choice (its producer and readers all fp32) is
    not counted again. Exact tensors (infinite SQNR) are never chosen.

    Args:
        layers: :func:`quantize.diagnose.diagnose` of the int8 graph.
        gm: the graph the quantizer annotates (:func:`quantize.diagnose.float_graph`: names line up).
        k: tensors to keep fp32 (>= 1).
        images: how many images ``layers`` was measured on (for the record).

    Raises:
        EdgeSeError: ``k < 1``, or ``k`` not below the number of quantised tensors.
    """
    if k < 1 or k >= len(layers):
        raise EdgeSeError(f"bad --float-layers {k}: need >= 1, and this graph quantises {len(layers)} tensors; "
                          "keep fewer fp32 (all of them fp32 is the fp32 artifact)")
    ranked = sorted((r for r in layers if math.isfinite(r.sqnr_db_isolated)),
                    key=lambda r: (r.sqnr_db_isolated, r.index))
    quantized = {r.name for r in layers}
    kept: list[tuple[str, float, str]] = []
    nodes: set[str] = set()
    for r in ranked:
        if len(kept) == k:
            break
        need = tensor_float_nodes(gm, r.name, quantized)
        if need and set(need) <= nodes:
            continue
        nodes.update(need)
        kept.append((r.name, float(r.sqnr_db_isolated), r.op))
    order = [n.name for n in gm.graph.nodes if n.name in nodes]
    return FloatLayers(tuple(kept), tuple(order), images)
