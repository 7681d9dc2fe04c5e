"""Find Squeeze-and-Excitation blocks in an exported FX graph by pattern, for any model.

The pattern, walked backwards from every gate node:

    x ──> mean / adaptive_avg_pool2d ──> fc1 (conv2d | linear) ──> act ──> fc2 (conv2d | linear)
      └────────────────────────────────────────────────────────────────> mul <── gate (sigmoid | hardsigmoid | softmax)

Shape-only nodes (view, reshape, flatten, squeeze, unsqueeze) may sit anywhere between the pool
and the multiply (linear-based SE blocks flatten the pooled vector). The pattern works on the
graphs ``torch.export.export(model, ...).module()`` gives for edge-se's, torchvision's
(``SqueezeExcitation``) and timm's (``SqueezeExcite``) networks, so every quantisation policy
applies to all of them. Blocks are named by the innermost module path that holds both FCs and the
gate (the SE module: ``blocks.0.se``, ``features.1.0.block.1``); the multiply's node name otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch.fx import GraphModule, Node

_aten = torch.ops.aten
POOL_TARGETS = {_aten.mean.dim, _aten.adaptive_avg_pool2d.default, _aten.mean.default}
FC_TARGETS = {_aten.conv2d.default, _aten.linear.default, _aten.addmm.default}
GATE_TARGETS = {_aten.sigmoid.default, _aten.hardsigmoid.default, _aten.sigmoid_.default, _aten.hardsigmoid_.default,
                _aten.softmax.int, _aten._softmax.default}  # softmax over channels: the competition gate
MUL_TARGETS = {_aten.mul.Tensor, _aten.mul_.Tensor}
SHAPE_TARGETS = {
    _aten.view.default,
    _aten.reshape.default,
    _aten.flatten.using_ints,
    _aten.squeeze.dim,
    _aten.squeeze.dims,
    _aten.unsqueeze.default,
    _aten._unsafe_view.default,
}
ACT_TARGETS = {
    _aten.relu.default,
    _aten.relu_.default,
    _aten.silu.default,
    _aten.silu_.default,
    _aten.hardswish.default,
    _aten.hardswish_.default,
    _aten.gelu.default,
    _aten.relu6.default,
    _aten.hardtanh.default,
    _aten.hardtanh_.default,
}


@dataclass(frozen=True)
class SEBlock:
    """One SE block found in a graph: node names (stable through prepare/convert) and its module path.

    Attributes:
        name: module path of the SE block (``blocks.0.se``, ``features.1.0.block.1``).
        pool, fc1, act, fc2, gate, mul: names of the matched graph nodes.
        gate_arg: which argument (0 or 1) of ``mul`` is the gate; the other is the feature map.
        gate_op: ``sigmoid``, ``hardsigmoid`` or ``softmax``.
        channels: C, the gated channels; ``reduced``: C_r, the bottleneck width.
    """

    name: str
    pool: str
    fc1: str
    act: str
    fc2: str
    gate: str
    mul: str
    gate_arg: int
    gate_op: str
    channels: int
    reduced: int

    def excitation_nodes(self) -> tuple[str, ...]:
        """The nodes of the excitation path: both FCs, the activation and the gate."""
        return (self.fc1, self.act, self.fc2, self.gate)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready record."""
        return asdict(self)


def _skip_shapes_back(node: object) -> object:
    while isinstance(node, Node) and node.op == "call_function" and node.target in SHAPE_TARGETS:
        node = node.args[0]
    return node


def _module_path(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self__.", "")


def _common_prefix(paths: Iterable[str]) -> str:
    split = [p.split(".") for p in paths if p]
    if not split:
        return ""
    prefix: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        prefix.append(parts[0])
    return ".".join(prefix)


def _fc_channels(gm: GraphModule, fc: Node) -> tuple[int, int]:
    """(in, out) channels of a conv2d/linear node from its weight's shape."""
    weight = fc.args[1] if fc.target != _aten.addmm.default else fc.args[2]
    if isinstance(weight, Node) and "val" in weight.meta:
        shape = tuple(weight.meta["val"].shape)
    elif isinstance(weight, Node) and weight.op == "get_attr":
        shape = tuple(getattr_path(gm, str(weight.target)).shape)
    else:
        return (-1, -1)
    if fc.target == _aten.addmm.default:  # addmm(bias, x, W^T): W^T is [in, out]
        return int(shape[0]), int(shape[1])
    return int(shape[1]), int(shape[0])


def getattr_path(module: torch.nn.Module, path: str) -> torch.Tensor:
    """``module.a.b.c`` for the dotted ``path`` (a ``get_attr`` target)."""
    obj: object = module
    for part in path.split("."):
        obj = getattr(obj, part)
    assert isinstance(obj, torch.Tensor)
    return obj


def _match(gm: GraphModule, gate: Node) -> SEBlock | None:
    fc2 = _skip_shapes_back(gate.args[0])
    if not (isinstance(fc2, Node) and fc2.target in FC_TARGETS):
        return None
    fc2_in = fc2.args[1] if fc2.target == _aten.addmm.default else fc2.args[0]
    act = _skip_shapes_back(fc2_in)
    if not (isinstance(act, Node) and act.target in ACT_TARGETS):
        return None
    fc1 = _skip_shapes_back(act.args[0])
    if not (isinstance(fc1, Node) and fc1.target in FC_TARGETS):
        return None
    fc1_in = fc1.args[1] if fc1.target == _aten.addmm.default else fc1.args[0]
    pool = _skip_shapes_back(fc1_in)
    if not (isinstance(pool, Node) and pool.target in POOL_TARGETS):
        return None
    feature = pool.args[0]
    # The gate reaches the multiply directly or through shape-only nodes (view to [N, C, 1, 1]).
    frontier = [gate]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user.op == "call_function" and user.target in SHAPE_TARGETS:
                frontier.append(user)
            elif user.op == "call_function" and user.target in MUL_TARGETS and len(user.args) == 2:
                side = 0 if user.args[0] is node else 1
                if user.args[1 - side] is feature:
                    in_ch, red = _fc_channels(gm, fc1)
                    # The SE module is the innermost module holding both FCs and the gate.
                    name = _common_prefix([_module_path(fc1), _module_path(fc2), _module_path(gate)]) or user.name
                    return SEBlock(
                        name=name,
                        pool=pool.name,
                        fc1=fc1.name,
                        act=act.name,
                        fc2=fc2.name,
                        gate=gate.name,
                        mul=user.name,
                        gate_arg=side,
                        gate_op=_gate_op(gate),
                        channels=in_ch,
                        reduced=red,
                    )
    return None


def _gate_op(gate: Node) -> str:
    target = str(gate.target)
    return "softmax" if "softmax" in target else "hardsigmoid" if "hardsigmoid" in target else "sigmoid"


def find_se_blocks(gm: GraphModule) -> list[SEBlock]:
    """Every SE block of an exported graph, in graph (forward) order.

    Args:
        gm: ``torch.export.export(model, example_inputs).module()`` or a graph derived from it
            (prepared or converted PT2E graphs keep the node names).

    Returns:
        One :class:`SEBlock` per match; empty for a network without SE.
    """
    blocks = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in GATE_TARGETS:
            block = _match(gm, node)
            if block is not None:
                blocks.append(block)
    return _dedupe_names(blocks)


def _dedupe_names(blocks: list[SEBlock]) -> list[SEBlock]:
    seen: dict[str, int] = {}
    out = []
    for b in blocks:
        n = seen.get(b.name, 0)
        seen[b.name] = n + 1
        out.append(b if n == 0 else SEBlock(**{**b.as_dict(), "name": f"{b.name}#{n}"}))  # type: ignore[arg-type]
    return out
