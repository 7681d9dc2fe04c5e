"""The float graph whose node names and values line up with a converted PT2E graph.

``prepare_pt2e`` fuses Conv/Linear + BatchNorm and runs the quantizer's ``transform_for_annotation``
(edge-se's int8 rewrites edit weights and keep node names) before it annotates. The exported float
graph put through the same steps holds, node for node, the float value of what the converted graph
computes: ``diagnose`` compares the two per tensor, bias correction per layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping

import torch
from torch.fx import GraphModule, Node

from quantize.se_pattern import getattr_path

#: The layers with a weight and a bias that PT2E fuses BatchNorm into and quantises per output channel:
#: what bias correction, AdaRound and the error split edit.
WEIGHTED_OPS: tuple[str, ...] = ("aten.conv2d.default", "aten.linear.default")
#: The ops a converted graph reads an int8 weight through (per output channel, or one scale).
WEIGHT_DEQUANTIZE_OPS: tuple[str, ...] = ("quantized_decomposed.dequantize_per_channel.default",
                                          "quantized_decomposed.dequantize_per_tensor.default")


def weighted_layers(gm: GraphModule) -> Iterator[tuple[Node, Node]]:
    """Every conv/linear of a converted graph that reads its weight through a dequantize op, in graph order.

    Yields:
        ``(layer, dequantize)``: the ``aten.conv2d`` / ``aten.linear`` node and the node its weight
        argument is (one of :data:`WEIGHT_DEQUANTIZE_OPS`).
    """
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target) not in WEIGHTED_OPS or len(node.args) < 2:
            continue
        dq = node.args[1]
        if isinstance(dq, Node) and str(dq.target) in WEIGHT_DEQUANTIZE_OPS:
            yield node, dq


def constant(gm: GraphModule, arg: object) -> torch.Tensor | None:
    """The tensor ``arg`` names when it is a ``get_attr`` node of ``gm``; None for anything else."""
    if isinstance(arg, Node) and arg.op == "get_attr":
        return getattr_path(gm, str(arg.target))
    return None


def shared_constants(gm: GraphModule) -> set[str]:
    """``get_attr`` targets read by more than one operator, through one node or several.

    Editing such a weight or bias for one layer would change another layer too.
    """
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            uses[str(node.target)] = uses.get(str(node.target), 0) + len(node.users)
    return {t for t, n in uses.items() if n > 1}


def aligned_float_graph(reference: GraphModule, quantizer: object) -> GraphModule:
    """``reference`` (the exported float graph) through the steps ``prepare_pt2e`` takes with ``quantizer``.

    ``reference`` is not modified.
    """
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

    gm = copy.deepcopy(reference)
    _fuse_conv_bn_(gm)
    _fuse_linear_bn_(gm)
    transform = getattr(copy.copy(quantizer), "transform_for_annotation", None)  # a copy: it records what it applied
    if transform is not None:
        gm = transform(gm)
    gm.recompile()
    return gm


def stored_integers(stored: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, folded: bool,
                    limits: tuple[int, int] = (-127, 127)) -> torch.Tensor:
    """The integers a converted graph's per-channel weight holds, as floats.

    ``stored`` is the int8 constant itself (``folded``: ``convert_pt2e(fold_quantize=True)``) or the
    float weight its quantize node rounds (unfolded); ``scale`` / ``zero_point`` are per output
    channel (axis 0), ``limits`` the grid's integer range.
    """
    if folded:
        return stored.detach().float()
    shape = (-1,) + (1,) * (stored.ndim - 1)
    zp = zero_point.float().reshape(shape) if isinstance(zero_point, torch.Tensor) else zero_point
    return torch.clamp(torch.round(stored.detach().float() / scale.float().reshape(shape)) + zp, *limits)


@torch.no_grad()
def store_integers(stored: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float,
                   folded: bool) -> None:
    """Write the integers ``q`` into a converted graph's per-channel weight ``stored`` (see :func:`stored_integers`).

    Folded: the int8 constant becomes ``q``. Unfolded: the float weight becomes ``s * (q - zp)``, which its
    quantize node maps back to exactly ``q``.
    """
    if folded:
        stored.copy_(q.to(stored.dtype))
        return
    shape = (-1,) + (1,) * (stored.ndim - 1)
    zp = zero_point.float().reshape(shape) if isinstance(zero_point, torch.Tensor) else zero_point
    stored.copy_((scale.float().reshape(shape) * (q - zp)).to(stored.dtype))


def snapshot(gm: GraphModule) -> dict[str, torch.Tensor]:
    """A copy of every tensor constant ``gm`` reads (``get_attr`` path -> clone), for :func:`restore`."""
    saved: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in saved:
            value = getattr_path(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                saved[str(node.target)] = value.detach().clone()
    return saved


@torch.no_grad()
def restore(gm: GraphModule, saved: Mapping[str, torch.Tensor]) -> None:
    """Copy ``saved`` (``get_attr`` path -> tensor) back into ``gm``'s constants in place: undo a rewrite."""
    for path, value in saved.items():
        getattr_path(gm, path).copy_(value)
