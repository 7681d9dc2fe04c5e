"""Cross-layer equalisation (CLE) across ReLU: channel scales moved between two layers, exactly.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV 2019),
as AIMET's ``equalize_model`` and NNCF's channel alignment apply it. For a layer ``p`` (conv or
linear with a bias), a ReLU, and the layers that read the ReLU's output (dense conv or linear, no
other reader):

    relu(W1 x + b1) = S relu(S^-1 (W1 x + b1))        for every diagonal S > 0

so dividing output channel ``i`` of ``p`` (its weight row and its bias) by ``s_i`` and multiplying
input channel ``i`` of every reader by ``s_i`` (a dense layer's column ``i``; a depthwise
convolution's row ``i``, which meets channel ``i`` alone) computes the same function. The classic choice
``s_i = sqrt(r1_i / r2_i)``, with ``r1_i`` the largest magnitude of ``p``'s row ``i`` and ``r2_i``
the largest of the readers' column ``i``, leaves both at ``sqrt(r1_i * r2_i)``: the channels of the
ReLU's output, whose magnitude follows ``r1_i``, come closer to one range, so the tensor's one int8
grid (activations are quantised per tensor) resolves the small channels better; the readers'
columns grow where the activation shrank.

Both int8 formats quantise weights per output channel, so ``p``'s own grid does not change (a row
scaled by a constant keeps its relative rounding); the readers' rows do, which is the price.
ReLU is the only activation this is exact across: hard-swish, SiLU and ReLU6 are not positively
homogeneous, so EfficientNet (SiLU everywhere) has no pair to equalise; MobileNetV3's ReLU blocks
(``expand -> relu -> depthwise``, ``depthwise -> relu -> project``), its SE FC pairs
(``reduce -> relu -> expand``) and SE-ResNet's bottlenecks do.

The graph is the one the quantizer is about to annotate (BatchNorm folded into its convolution, the
weights its own copies): :mod:`quantize.quantizers` runs :func:`equalize` in
``transform_for_annotation`` when the policy says ``cle``, so the aligned float graph of
:mod:`quantize.aligned` is equalised the same way and still lines up, node for node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from quantize.aligned import WEIGHTED_OPS, constant, shared_constants

_RELU = ("aten.relu.default", "aten.relu_.default")
#: Passes over the graph: a layer that reads one pair and produces the next has its rows and its
#: columns scaled; repeating until no scale moves by more than :data:`TOLERANCE` settles both.
MAX_PASSES = 8
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Pair:
    """One equalisable pair: the producing layer, the ReLU, the reading layers (node names)."""

    producer: str
    relu: str
    readers: tuple[str, ...]
    depthwise: tuple[bool, ...]


def _groups(node: Node) -> int:
    return int(node.args[6]) if str(node.target) == "aten.conv2d.default" and len(node.args) > 6 else 1  # type: ignore[arg-type]


def _reader(gm: GraphModule, node: Node, src: Node, channels: int) -> bool:
    """``node`` reads ``src`` as its input through a stored weight: dense (conv or linear) or depthwise.

    Depthwise means one input channel per output channel (``groups == channels``, weight
    ``[channels, 1, kh, kw]``): its row ``i`` is what channel ``i`` meets. Other grouped convolutions
    are left out.
    """
    if node.op != "call_function" or str(node.target) not in WEIGHTED_OPS or node.args[0] is not src:
        return False
    if len(node.args) < 2 or any(a is src for a in node.args[1:]):
        return False
    w = constant(gm, node.args[1])
    if w is None:
        return False
    g = _groups(node)
    return g == 1 or (g == channels and w.shape[0] == channels and w.shape[1] == 1)


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(int(d) for d in val.shape) if isinstance(val, torch.Tensor) else None


def _per_channel(node: Node, src: Node, channels: int) -> bool:
    """``node`` maps each channel of ``src`` to the same channel, linearly.

    A spatial mean, a squeeze to ``[N, C]``, or a multiply by a per-channel factor that is not
    ``src`` (the SE gate: computed from the scaled tensor only through a reader, whose columns
    undo the scale; any other path from ``src`` to it ends the walk in :func:`_readers`).
    """
    t, out, inp = str(node.target), _shape(node), _shape(src)
    if node.op != "call_function" or (node.args[0] is not src and t != "aten.mul.Tensor"):
        return False
    if out is None or inp is None or len(out) < 2 or out[1] != channels:
        return False
    if t == "aten.mean.dim":
        dims = node.args[1] if len(node.args) > 1 else None
        return len(inp) == 4 and isinstance(dims, (list, tuple)) and sorted(int(d) % 4 for d in dims) == [2, 3]
    if t in ("aten.view.default", "aten.reshape.default", "aten.flatten.using_ints", "aten.squeeze.dims"):
        return math.prod(inp[1:]) == channels and math.prod(out[1:]) == channels
    if t == "aten.mul.Tensor" and len(node.args) == 2:
        other = node.args[1] if node.args[0] is src else node.args[0]
        if other is src or (node.args[0] is not src and node.args[1] is not src):
            return False
        factor = _shape(other) if isinstance(other, Node) else ()
        return factor is not None and out == inp and (
            not factor or (len(factor) == len(inp) and factor[1] in (1, channels)
                           and all(d == 1 for d in factor[2:])))
    return False


def _readers(gm: GraphModule, relu: Node, channels: int, keep: frozenset[str]) -> list[tuple[Node, bool]] | None:
    """The weighted layers the ReLU's channels reach through per-channel linear operators, or None.

    None when any path from the ReLU meets something else first (a residual add, the graph output, a
    kept node): scaling the channels would change what it computes.
    """
    readers: list[tuple[Node, bool]] = []
    frontier, seen = [relu], {relu}
    while frontier:
        src = frontier.pop()
        if not src.users:
            return None
        for user in src.users:
            if user.name in keep:
                return None
            if _reader(gm, user, src, channels):
                if user not in (r for r, _ in readers):
                    readers.append((user, _groups(user) != 1))
            elif _per_channel(user, src, channels):
                if user not in seen:
                    seen.add(user)
                    frontier.append(user)
            else:
                return None
    return readers or None


def _row_ranges(w: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of each output channel's row of ``w`` (``[C]``)."""
    return w.detach().abs().reshape(w.shape[0], -1).amax(1)


def _columns(w: torch.Tensor, depthwise: bool) -> torch.Tensor:
    """``w`` as ``[C, -1]``: what input channel ``i`` is multiplied by (a column, or a depthwise row)."""
    return (w if depthwise else w.transpose(0, 1)).reshape(w.shape[0] if depthwise else w.shape[1], -1)


def find_pairs(gm: GraphModule, *, keep: frozenset[str] = frozenset()) -> list[Pair]:
    """Every ``layer -> relu -> layers`` in ``gm`` with stored weights and a stored producer bias.

    Between the ReLU and its readers may stand operators that keep each channel apart and linear
    (:func:`_per_channel`): an SE block's squeeze and channel multiply, so ``depthwise -> relu ->
    SE -> project`` is a pair whose readers are the SE's first FC and the projection. Nodes named
    in ``keep`` (a policy's fp32 island) are left out, and so is any ReLU whose output reaches
    anything else first (a residual add, a hard-swish, the graph output), or whose producer feeds
    anything but the ReLU.
    """
    pairs = []
    for relu in gm.graph.nodes:
        if relu.op != "call_function" or str(relu.target) not in _RELU or relu.name in keep:
            continue
        prod = relu.args[0]
        if not isinstance(prod, Node) or prod.op != "call_function" or str(prod.target) not in WEIGHTED_OPS:
            continue
        if len(prod.users) != 1 or len(prod.args) < 3 or prod.name in keep:
            continue
        w1, b1 = constant(gm, prod.args[1]), constant(gm, prod.args[2])
        if w1 is None or b1 is None:
            continue
        readers = _readers(gm, relu, int(w1.shape[0]), keep)
        if readers is None:
            continue
        pairs.append(Pair(prod.name, relu.name, tuple(r.name for r, _ in readers), tuple(d for _, d in readers)))
    return pairs


def scales(w1: torch.Tensor, readers: list[torch.Tensor], depthwise: tuple[bool, ...] | None = None) -> torch.Tensor:
    """Per channel ``s_i = sqrt(r1_i / r2_i)``; 1 where either range is 0 (a dead channel stays as it is).

    Args:
        w1: the producer's weight ``[C, ...]``.
        readers: each reader's weight, ``[O, C, ...]`` (dense) or ``[C, 1, kh, kw]`` (depthwise).
        depthwise: per reader, whether it is depthwise (None: all dense).
    """
    dw = depthwise or (False,) * len(readers)
    r1 = _row_ranges(w1).double()
    r2 = torch.stack([_columns(w.detach().abs(), d).amax(1) for w, d in zip(readers, dw, strict=True)]).amax(0)
    r2 = r2.double()
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)), torch.ones_like(r1))
    return s.float()


def equalize(gm: GraphModule, *, keep: frozenset[str] = frozenset()) -> dict[str, object]:
    """Equalise every pair :func:`find_pairs` finds in ``gm``, in place (weights only; the graph stays).

    Returns:
        ``{"pairs": [{"producer", "relu", "readers", "channels", "spread_before", "spread_after"}],
        "passes"}``: per pair the ratio of the largest to the smallest nonzero producer row range before
        and after (the ReLU output's channel spread, the figure equalisation narrows).
    """
    pairs = find_pairs(gm, keep=keep)
    shared = shared_constants(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    usable: list[tuple[Pair, torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
    # A layer read through two pairs' ReLUs, or a depthwise reader that produces the next pair, is fine:
    # its rows and columns are scaled by different pairs, and the passes settle both.
    for pair in pairs:
        prod = nodes[pair.producer]
        attrs = [prod.args[1], prod.args[2], *(nodes[r].args[1] for r in pair.readers)]
        if any(isinstance(a, Node) and str(a.target) in shared for a in attrs):
            continue
        w1, b1 = constant(gm, prod.args[1]), constant(gm, prod.args[2])
        ws = [w for r in pair.readers if (w := constant(gm, nodes[r].args[1])) is not None]
        assert w1 is not None and b1 is not None and len(ws) == len(pair.readers)  # find_pairs checked them
        usable.append((pair, w1, b1, ws))

    def spread(w: torch.Tensor) -> float:
        r = _row_ranges(w)
        r = r[r > 0]
        return float(r.max() / r.min()) if r.numel() else 1.0

    before = [spread(w1) for _, w1, _, _ in usable]
    passes = 0
    with torch.no_grad():
        while passes < MAX_PASSES:
            passes += 1
            moved = 0.0
            for pair, w1, b1, ws in usable:
                s = scales(w1, ws, pair.depthwise)
                w1.div_(s.reshape((-1,) + (1,) * (w1.ndim - 1)))
                b1.div_(s)
                for w, dw in zip(ws, pair.depthwise, strict=True):
                    w.mul_(s.reshape((-1,) + (1,) * (w.ndim - 1)) if dw else s.reshape((1, -1) + (1,) * (w.ndim - 2)))
                moved = max(moved, float(s.log().abs().max()) if s.numel() else 0.0)
            if moved < TOLERANCE:
                break
    return {"pairs": [{"producer": p.producer, "relu": p.relu, "readers": list(p.readers), "channels": int(w1.shape[0]),
                       "spread_before": round(b, 3), "spread_after": round(spread(w1), 3)}
                      for (p, w1, _, _), b in zip(usable, before, strict=True)],
            "passes": passes}


def summary(report: dict[str, object]) -> str:
    """One line for the manifest's ``rewrites``."""
    pairs = report["pairs"]
    assert isinstance(pairs, list)
    if not pairs:
        return "cle: no layer -> relu -> layer pair (nothing equalised)"
    b = sorted(p["spread_before"] for p in pairs)
    a = sorted(p["spread_after"] for p in pairs)
    return (f"cle: {len(pairs)} layer -> relu -> layer pairs equalised in {report['passes']} pass(es); "
            f"median channel range spread {b[len(b) // 2]:.1f}x -> {a[len(a) // 2]:.1f}x")
