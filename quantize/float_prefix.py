"""A float prefix: the network's first layers kept fp32, the rest int8 (``--float-prefix N``).

Why: on a CPU without an int8 dot-product instruction (x86 with AVX2 but no VNNI), XNNPACK's int8
kernels lose to its fp32 ones exactly where a layer does little arithmetic per output value. The
per-operator profiles of MobileNetV3-Large at 224 px on an AVX2-only AMD EPYC (``edge-se bench
--profile``, 1 thread) show it: the 1x1 convolutions of the first blocks (16-24 input channels at
112-56 px) take 1.9x their fp32 time in int8 (181 vs 92 us, 651 vs 342 us), the stem 1.3-3.8x, the
first depthwise convolutions 1.1-1.7x, while the late 1x1 convolutions (hundreds of input
channels) are up to 4x faster in int8. Every value an int8 GEMM writes is requantised (int32 ->
float -> rounded int8); with K = 16 inputs per value that fixed cost dominates, and AVX2's
``vpmaddwd`` path has no throughput to spare. Keeping the layers before a boundary in fp32 costs
one quantize of the activation at the boundary and buys their fp32 speed. Fewer tensors are
quantised, but the layers after the boundary are calibrated on other inputs: fidelity moves by
about a decibel either way (tests/test_float_prefix.py). Where the boundary pays off is a property
of the CPU: measure with ``edge-se bench --profile`` on both artifacts
(:func:`device_bench.op_profile.prefix_gain`).

The units of the prefix are the network's execution units in graph order, read from
``torch.export``'s ``nn_module_stack``: for each node, the outermost module that is not a container
(``Sequential``, ``ModuleList``, ``ModuleDict``): ``stem``, ``blocks.0``, ``blocks.1``, ... ``head``
for edge-se's networks; ``conv_stem``, ``bn1``, ``blocks.0.0``, ... for timm's. ``--float-prefix
N`` keeps the first N units fp32 (``N = 0``: none).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.fx import GraphModule, Node

from edge_se.errors import EdgeSeError

#: Module classes that only hold other units: a unit is the outermost module below them.
CONTAINERS = ("torch.nn.modules.container.Sequential", "torch.nn.modules.container.ModuleList",
              "torch.nn.modules.container.ModuleDict")


def _type_name(t: object) -> str:
    return t if isinstance(t, str) else f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', t)}"


def node_unit(node: Node) -> str | None:
    """The execution unit of ``node`` (``blocks.3``), or None where the graph kept no module stack for it."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, kind in stack.values():
        if path and _type_name(kind) not in CONTAINERS:
            return str(path)
    return None


def units(gm: GraphModule) -> list[str]:
    """The execution units of ``gm`` in graph order, each once."""
    out: list[str] = []
    for node in gm.graph.nodes:
        unit = node_unit(node) if node.op == "call_function" else None
        if unit is not None and unit not in out:
            out.append(unit)
    return out


def compute_units(gm: GraphModule) -> list[str]:
    """The unit of every convolution and linear layer of ``gm``, in graph order (one per XNNPACK compute operator).

    Raises:
        EdgeSeError: a layer without a module stack (its unit unknown).
    """
    import torch

    layers = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in layers:
            unit = node_unit(node)
            if unit is None:
                raise EdgeSeError(f"layer {node.name} has no module stack: its unit is unknown")
            out.append(unit)
    return out


@dataclass(frozen=True)
class FloatPrefix:
    """The first ``len(units)`` execution units of a graph, kept fp32.

    Attributes:
        units: the units kept fp32, in graph order.
        nodes: names of their operator nodes (graph order).
        boundary: name of the first node after them: every operator before it stays fp32, including
            nodes a quantizer's own transform adds later.
    """

    units: tuple[str, ...]
    nodes: tuple[str, ...]
    boundary: str

    def record(self) -> dict[str, object]:
        """What the manifest's ``quantization.float_prefix`` holds."""
        return {"units": list(self.units), "count": len(self.units), "boundary": self.boundary,
                "fp32_nodes": len(self.nodes)}


def float_prefix(gm: GraphModule, n: int) -> FloatPrefix | None:
    """The prefix of the first ``n`` units of ``gm`` (None for ``n = 0``).

    Raises:
        EdgeSeError: ``n`` negative, or not fewer than the graph's units (the whole network fp32
            is the fp32 artifact, not an int8 one).
    """
    if n < 0:
        raise EdgeSeError(f"bad --float-prefix {n}: need a count of leading units >= 0")
    if n == 0:
        return None
    order = units(gm)
    if n >= len(order):
        raise EdgeSeError(f"bad --float-prefix {n}: this network has {len(order)} units ({order[0]} .. {order[-1]}); "
                          f"keep fewer than {len(order)} fp32")
    kept = set(order[:n])
    names: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        unit = node_unit(node)
        if unit is not None and unit not in kept:
            return FloatPrefix(tuple(order[:n]), tuple(names), node.name)
        names.append(node.name)
    raise EdgeSeError(f"--float-prefix {n}: no operator after {order[n - 1]}")  # unreachable: n < len(order)


def prefix_nodes(gm: GraphModule, boundary: str) -> list[Node]:
    """The operator nodes of ``gm`` before the node named ``boundary``.

    Raises:
        EdgeSeError: no node of that name (a rewrite renamed it): the prefix cannot be placed.
    """
    out: list[Node] = []
    for node in gm.graph.nodes:
        if node.name == boundary:
            return out
        if node.op == "call_function":
            out.append(node)
    raise EdgeSeError(f"float prefix: boundary node {boundary!r} not in the graph (a rewrite renamed it)")
