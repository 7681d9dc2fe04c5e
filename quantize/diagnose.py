"""Where int8 loses fidelity, layer by layer: two SQNRs per quantised activation.

For every activation the PT2E quantizer put a quantize/dequantize pair on (every
``quantized_decomposed.quantize_per_tensor`` node of the converted graph whose input is a computed
tensor or a graph input, not a weight):

* ``sqnr_db_accumulated``: the dequantised tensor of the fully quantised graph (everything upstream
  quantised, weights included) against the same tensor of the float graph;
* ``sqnr_db_isolated``: the same tensor when only it is quantised: the float tensor fake-quantised
  with that pair's scale, zero point and range. Quantising one tensor changes nothing upstream of
  it, so this needs no extra forward pass: it is the float tensor through its own quantize /
  dequantize ops.

The float graph is the exported float reference (``QuantizedModel.reference``) put through the
same steps ``prepare_pt2e`` takes before annotating (Conv/Linear + BatchNorm fusion, then the
quantizer's ``transform_for_annotation``: edge-se's int8 rewrites such as ``hardsigmoid-fold``
edit weights and keep node names). Without those steps a node of the converted graph and the node
of the same name in the reference can hold different values (``conv2d`` before / after its
BatchNorm, ``fc2`` before / after ``/ 6 + 0.5``). Node names then match one for one.

Example:
    >>> import torch, edge_se
    >>> from quantize import quantize_model
    >>> from quantize.diagnose import diagnose, worst
    >>> model = edge_se.build_model("mobilenetv3_small_050", num_classes=10).eval()
    >>> calib = [torch.randn(16, 3, 32, 32)]
    >>> qm = quantize_model(model, (calib[0][:1],), calib, target="pte")
    >>> layers = diagnose(qm, torch.randn(8, 3, 32, 32))
    >>> worst(layers, 3)[0].sqnr_db_isolated <= layers[0].sqnr_db_isolated
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch.fx import GraphModule, Node

from edge_se.errors import EdgeSeError
from quantize.aligned import aligned_float_graph, constant, weighted_layers
from quantize.capture import EVAL_BATCH, Recorder, run_graph
from quantize.metrics import _ratio_db, sqnr_db
from quantize.se_pattern import SEBlock


class Quantized(Protocol):
    """What diagnosing needs of a quantised network.

    ``quantize.core.QuantizedModel`` has it; this module does not import that class, so that the
    quantisation core can call :func:`diagnose` (``float-sensitive``, ``auto``'s stage 3).
    """

    graph: GraphModule
    reference: GraphModule | None
    quantizer: object
    se_blocks: list


# quantize_per_tensor / dequantize_per_tensor overloads (``quantized_decomposed``, registered by torchao).
QUANTIZE_OPS = ("quantized_decomposed.quantize_per_tensor.default", "quantized_decomposed.quantize_per_tensor.tensor")
DEQUANTIZE_OPS = ("quantized_decomposed.dequantize_per_tensor.default",
                  "quantized_decomposed.dequantize_per_tensor.tensor")
# The top offenders reported by default.
WORST = 5


@dataclass(frozen=True)
class LayerFidelity:
    """One quantised activation and what int8 costs it.

    Attributes:
        index: position among the quantised activations, in graph order (0 = first).
        name: graph node name of the tensor (the quantize node's input; same in float and int8 graphs).
        op: the operator producing it (``aten.conv2d.default``; ``input`` for a graph input).
        se_block: the SE block it belongs to (pool .. channel multiply), or None.
        sqnr_db_accumulated: SQNR (dB) of the tensor in the fully quantised graph vs float.
        sqnr_db_isolated: SQNR (dB) of the tensor when only it is quantised.
        scale, zero_point: its int8 grid.
        float_min, float_max: range of the float tensor on the images diagnosed.
    """

    index: int
    name: str
    op: str
    se_block: str | None
    sqnr_db_accumulated: float
    sqnr_db_isolated: float
    scale: float
    zero_point: int
    float_min: float
    float_max: float

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready record (SQNRs capped at :data:`quantize.metrics.SQNR_CAP_DB`)."""
        return asdict(self)


@dataclass(frozen=True)
class _Site:
    name: str  # the float tensor (quantize node's input)
    quantize: Node
    dequantize: Node


def float_graph(qm: Quantized) -> GraphModule:
    """The float graph whose node names and values line up with ``qm.graph`` (see module docstring).

    Raises:
        EdgeSeError: ``qm`` carries no float reference.
    """
    if qm.reference is None:
        raise EdgeSeError("the quantised model carries no float reference graph: nothing to compare against")
    return aligned_float_graph(qm.reference, qm.quantizer)


def quantized_sites(gm: GraphModule) -> list[_Site]:
    """Every activation quantize node of a converted graph with one of its dequantize users, in graph order."""
    sites = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target) not in QUANTIZE_OPS:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or src.op not in ("call_function", "placeholder"):
            continue  # a weight or constant, not an activation
        if str(src.target).startswith("quantized_decomposed."):
            continue  # a requantisation: the tensor is counted at its first quantize node
        dq = next((u for u in node.users if u.op == "call_function" and str(u.target) in DEQUANTIZE_OPS), None)
        if dq is not None:
            sites.append(_Site(src.name, node, dq))
    return sites


def se_membership(gm: GraphModule, blocks: Sequence[SEBlock]) -> dict[str, str]:
    """``{node name: SE block name}`` for the nodes from each block's pool to its channel multiply."""
    nodes = {n.name: n for n in gm.graph.nodes}
    out: dict[str, str] = {}
    for b in blocks:
        if b.mul not in nodes:
            continue
        out[b.mul] = b.name
        frontier = [nodes[b.mul].args[b.gate_arg]]
        while frontier:
            node = frontier.pop()
            if not isinstance(node, Node) or node.op != "call_function" or node.name in out:
                continue
            out[node.name] = b.name
            if node.name != b.pool:
                frontier.extend(a for a in node.all_input_nodes)
    return out


def _resolve(gm: GraphModule, arg: object) -> object:
    value = constant(gm, arg)
    if value is not None:
        return value
    if isinstance(arg, Node):
        raise EdgeSeError(f"quantisation parameter {arg.name!r} is computed in the graph (dynamic "
                          "quantisation?): diagnose handles static int8 only")
    return arg


def _fake_quant(gm: GraphModule, site: _Site, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the site's own quantize and dequantize ops (the converted graph's arithmetic)."""
    qargs = [_resolve(gm, a) for a in site.quantize.args[1:]]
    dqargs = [_resolve(gm, a) for a in site.dequantize.args[1:]]
    q = site.quantize.target(x, *qargs, **site.quantize.kwargs)  # type: ignore[operator]
    return site.dequantize.target(q, *dqargs, **site.dequantize.kwargs)  # type: ignore[operator]


def _op_name(node: Node) -> str:
    if node.op == "placeholder":
        return "input"
    target = node.target
    return str(target) if not callable(target) or isinstance(target, torch._ops.OpOverload) else target.__name__


@torch.no_grad()
def diagnose(qm: Quantized, images: torch.Tensor, *, batch: int = EVAL_BATCH) -> list[LayerFidelity]:
    """Per quantised activation of ``qm.graph``: accumulated and isolated SQNR on ``images``.

    Args:
        qm: a :class:`quantize.core.QuantizedModel` (``graph``, ``reference``, ``quantizer``, ``se_blocks``).
        images: preprocessed float images ``[N, 3, R, R]``, best never calibrated on.
        batch: images per forward pass.

    Returns:
        One :class:`LayerFidelity` per quantised activation, in graph order.

    Raises:
        EdgeSeError: no images, no float reference, a quantised tensor the float graph lacks.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise EdgeSeError(f"diagnose needs a batch of images [N, 3, R, R], got shape {tuple(images.shape)}")
    qgraph = qm.graph
    fgraph = float_graph(qm)
    sites = quantized_sites(qgraph)
    fnodes = {n.name: n for n in fgraph.graph.nodes}
    missing = [s.name for s in sites if s.name not in fnodes]
    if missing:
        raise EdgeSeError(f"{len(missing)} quantised tensors have no node of the same name in the float graph "
                          f"(first: {missing[0]!r}): the graphs do not line up")
    members = se_membership(fgraph, qm.se_blocks)
    qwanted = {s.dequantize.name for s in sites}
    fwanted = {s.name for s in sites}
    n = len(sites)
    signal = [0.0] * n
    noise_acc = [0.0] * n
    noise_iso = [0.0] * n
    lo = [math.inf] * n
    hi = [-math.inf] * n
    for start in range(0, images.shape[0], batch):
        x = images[start : start + batch].float()
        frec = Recorder(fgraph, fwanted, flatten=False)
        frec.run(x)
        qrec = Recorder(qgraph, qwanted, flatten=False)
        qrec.run(x)
        for i, site in enumerate(sites):
            ref = frec.values[site.name].float()
            acc = qrec.values[site.dequantize.name].float()
            if acc.numel() != ref.numel():
                raise EdgeSeError(f"tensor {site.name!r}: {tuple(acc.shape)} in the int8 graph, "
                                  f"{tuple(ref.shape)} in the float graph")
            iso = _fake_quant(qgraph, site, ref).float()
            r = ref.double()
            signal[i] += float((r * r).sum())
            noise_acc[i] += float(((r - acc.reshape(ref.shape).double()) ** 2).sum())
            noise_iso[i] += float(((r - iso.double()) ** 2).sum())
            lo[i] = min(lo[i], float(ref.min()))
            hi[i] = max(hi[i], float(ref.max()))
    out = []
    for i, site in enumerate(sites):
        qargs = [_resolve(qgraph, a) for a in site.quantize.args[1:3]]
        out.append(LayerFidelity(
            index=i,
            name=site.name,
            op=_op_name(fnodes[site.name]),
            se_block=members.get(site.name),
            sqnr_db_accumulated=_ratio_db(signal[i], noise_acc[i]),
            sqnr_db_isolated=_ratio_db(signal[i], noise_iso[i]),
            scale=float(qargs[0]),  # type: ignore[arg-type]
            zero_point=int(qargs[1]),  # type: ignore[call-overload]
            float_min=lo[i],
            float_max=hi[i],
        ))
    return out


# The split names a side only when it loses this much more than the other (a factor of 2 in noise power).
SPLIT_MARGIN_DB = 3.0


@dataclass(frozen=True)
class ErrorSplit:
    """Whose grid the int8 error comes from: the logits with only the weights, or only the activations, int8.

    Attributes:
        sqnr_db: logits SQNR (dB) vs float of the int8 graph as it is.
        sqnr_db_weights_only: the same graph with every activation quantize/dequantize pair removed
            (int8 weights, fp32 activations).
        sqnr_db_activations_only: the same graph with every conv/linear reading its float weight
            (int8 activations, fp32 weights).
        images: how many images the three were measured on.
    """

    sqnr_db: float
    sqnr_db_weights_only: float
    sqnr_db_activations_only: float
    images: int

    @property
    def verdict(self) -> str:
        """Which side carries the loss, and which kind of remedy can reach it."""
        w, a = self.sqnr_db_weights_only, self.sqnr_db_activations_only
        if w + SPLIT_MARGIN_DB <= a:
            return "weights: their rounding (adaround) or grid can help; activation ranges cannot"
        if a + SPLIT_MARGIN_DB <= w:
            return ("activations: ranges (act-*), bias correction or fp32 tensors (float-sensitive) can help; "
                    "weight rounding cannot")
        return "both: weights and activations lose about as much"

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready record, with the verdict."""
        return {**asdict(self), "verdict": self.verdict}


def _activations_float(gm: GraphModule) -> GraphModule:
    """A copy of the converted ``gm`` with every activation quantize/dequantize pair bypassed (graph order)."""
    gm = copy.deepcopy(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or str(node.target) not in QUANTIZE_OPS:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or src.op == "get_attr":
            continue  # a constant's grid, not an activation's
        for dq in [u for u in node.users if str(u.target) in DEQUANTIZE_OPS]:
            dq.replace_all_uses_with(src)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _weights_float(gm: GraphModule, fgraph: GraphModule) -> GraphModule:
    """A copy of the converted ``gm`` whose conv/linear layers read the float weights of ``fgraph``."""
    gm = copy.deepcopy(gm)
    fnodes = {n.name: n for n in fgraph.graph.nodes}
    for node, dq in list(weighted_layers(gm)):
        fnode = fnodes.get(node.name)
        weight = None if fnode is None else constant(fgraph, fnode.args[1])
        if weight is None:
            continue
        attr = f"_edge_se_float_weight_{node.name}"
        gm.register_buffer(attr, weight.detach().clone())
        with gm.graph.inserting_before(node):
            node.replace_input_with(dq, gm.graph.get_attr(attr))
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def error_split(qm: Quantized, images: torch.Tensor, *, batch: int = EVAL_BATCH) -> ErrorSplit:
    """How much of ``qm``'s logits error the weights' grids and the activations' grids each cause, on ``images``.

    Three forward passes of the int8 graph: as it is, with fp32 activations, with fp32 weights
    (each against the float graph). Which side loses more says which remedies can help: learned
    rounding reaches only the weights, ranges and fp32 tensors only the activations.

    Raises:
        EdgeSeError: no images, or no float reference.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise EdgeSeError(f"error_split needs a batch of images [N, 3, R, R], got shape {tuple(images.shape)}")
    fgraph = float_graph(qm)
    ref = run_graph(fgraph, images, batch=batch)[0]

    def sqnr(gm: GraphModule) -> float:
        return sqnr_db(ref, run_graph(gm, images, batch=batch)[0])

    return ErrorSplit(sqnr_db=sqnr(qm.graph), sqnr_db_weights_only=sqnr(_activations_float(qm.graph)),
                      sqnr_db_activations_only=sqnr(_weights_float(qm.graph, fgraph)), images=int(images.shape[0]))


def worst(layers: Sequence[LayerFidelity], k: int = WORST) -> list[LayerFidelity]:
    """The ``k`` layers whose own quantisation costs most: isolated SQNR ascending (ties: graph order)."""
    return sorted(layers, key=lambda r: (r.sqnr_db_isolated, r.index))[:k]


def diagnose_table(layers: Sequence[LayerFidelity]) -> str:
    """The markdown table of ``layers`` (one row each, in the order given)."""
    from edge_se.tables import Column, table

    columns = [
        Column("#", "index", "d", "right"),
        Column("layer", "name"),
        Column("op", lambda r: str(r["op"]).removeprefix("aten.").removesuffix(".default")),
        Column("SE block", "se_block"),
        Column("SQNR accumulated (dB)", "sqnr_db_accumulated", ".1f", "right"),
        Column("SQNR isolated (dB)", "sqnr_db_isolated", ".1f", "right"),
        Column("scale", "scale", ".3g", "right"),
        Column("float range", lambda r: f"[{r['float_min']:.3g}, {r['float_max']:.3g}]"),
    ]
    return table(columns, [r.as_dict() for r in layers])


def plot_fidelity(layers: Sequence[LayerFidelity], path: str, *, title: str = "") -> str:
    """A PNG: accumulated and isolated SQNR per layer in graph order, SE-block layers shaded. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [r.index for r in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.09 * len(layers) + 3), 4.0))
    for r in layers:
        if r.se_block is not None:
            ax.axvspan(r.index - 0.5, r.index + 0.5, color="tab:orange", alpha=0.18, lw=0)
    ax.plot(idx, [r.sqnr_db_accumulated for r in layers], "-o", ms=3, label="accumulated (all upstream int8)")
    ax.plot(idx, [r.sqnr_db_isolated for r in layers], "-s", ms=3, label="isolated (this tensor only)")
    handles, _ = ax.get_legend_handles_labels()
    if any(r.se_block is not None for r in layers):
        from matplotlib.patches import Patch

        handles.append(Patch(color="tab:orange", alpha=0.18, label="SE block"))
    for r in worst(layers, 3):
        ax.annotate(r.name, (r.index, r.sqnr_db_isolated), fontsize=7, xytext=(3, -10), textcoords="offset points")
    ax.set_xlabel("quantised activation (graph order)")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title or "int8 fidelity per layer")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
