"""AdaRound: learned rounding of a converted int8 graph's weights, layer by layer.

Rounding each weight to its nearest grid point is not what minimises a layer's output error
(Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020; AIMET's
``Adaround``). For every ``aten.conv2d`` / ``aten.linear`` of the converted graph whose weight is
quantised per output channel (both PT2E quantizers edge-se uses: symmetric, [-127, 127], axis 0),
AdaRound chooses per weight between ``floor(w / s)`` and ``floor(w / s) + 1`` by minimising

    mean over images and positions of sum over channels of (layer(x_int8; s * q) - layer_float(x_float))^2
    + lam * sum over weights of (1 - |2 h(V) - 1|^beta)

where ``q = clamp(floor(w / s) + h(V), -127, 127)`` and ``h`` is the rectified sigmoid (zeta 1.1,
gamma -0.1); ``beta`` anneals from 20 to 2 after a warm-up with no regulariser, which pushes every
``h`` to 0 or 1. ``x_int8`` is the layer's input in the int8 graph with the layers before it already
rounded, ``layer_float(x_float)`` its output in the float graph (the asymmetric reconstruction of
AIMET and of Nagel et al.'s section 5: each layer also absorbs part of the error upstream).

Only the weights' integer values change; the scales, zero points, graph and node names stay, so the
artifact lowered from the graph carries the learned rounding and nothing else:

- ``pte`` graphs (``convert_pt2e(fold_quantize=True)``): the int8 constant is rewritten;
- ``tflite`` graphs (unfolded): the float weight becomes ``s * q``, which its quantize node maps
  back to exactly ``q``.

Safeguards: a layer keeps its new rounding only if its output error on the calibration images is
lower than with nearest rounding, and the whole rewrite is undone when it moves the logits away
from float on images it did not learn on (``check``: the pool's images outside the calibration
subset). Learned on a few images, rounding fits them: on timm's EfficientNet-B0 (.tflite graph, 64
calibration images) the logits went from 14.6 to 20.3 dB on those images and from 6.9 to 7.7 dB on
360 held-out ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own alias
from torch.fx import Graph, GraphModule, Node

from quantize.aligned import (
    WEIGHT_DEQUANTIZE_OPS,
    constant,
    restore,
    store_integers,
    stored_integers,
    weighted_layers,
)
from quantize.capture import EVAL_BATCH, run_graph
from quantize.metrics import sqnr_db
from quantize.se_pattern import getattr_path

_QUANTIZE_CHANNEL = "quantized_decomposed.quantize_per_channel.default"
_DEQUANTIZE_CHANNEL = WEIGHT_DEQUANTIZE_OPS[0]
# The rectified sigmoid's stretch (Nagel et al. 2020, eq. 23) and the regulariser's schedule.
ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END = 20.0, 2.0


@dataclass(frozen=True)
class AdaRoundConfig:
    """How hard AdaRound works per layer.

    Attributes:
        iterations: Adam steps per layer (AIMET's default is 10,000 on a GPU; at 8 bits a few
            hundred already settle most weights, and the cost is per layer on the CPU).
        batch: images per step, drawn at random from the calibration images.
        lr: Adam's learning rate on the rounding variables.
        reg: the regulariser's weight ``lam`` (AIMET: 0.01).
        warm_up: the first fraction of the steps without the regulariser (AIMET: 0.2).
        seed: seeds the batches.
    """

    iterations: int = 300
    batch: int = 16
    lr: float = 1e-2
    reg: float = 0.01
    warm_up: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class _Layer:
    node: Node
    weight: str  # get_attr path of the stored weight: int8 (folded) or float (unfolded)
    scale: str  # get_attr path of the per-channel scales
    folded: bool


def rounded_layers(gm: GraphModule) -> list[_Layer]:
    """Every conv/linear of a converted graph whose weight is int8 per output channel (axis 0), in graph order."""
    out = []
    for node, dq in weighted_layers(gm):
        if str(dq.target) != _DEQUANTIZE_CHANNEL or dq.args[3] != 0:
            continue
        src, scale = dq.args[0], dq.args[1]
        if not isinstance(scale, Node) or scale.op != "get_attr":
            continue
        if isinstance(src, Node) and src.op == "get_attr":
            out.append(_Layer(node, str(src.target), str(scale.target), folded=True))
        elif (isinstance(src, Node) and str(src.target) == _QUANTIZE_CHANNEL and isinstance(src.args[0], Node)
              and src.args[0].op == "get_attr"):
            out.append(_Layer(node, str(src.args[0].target), str(scale.target), folded=False))
    return out


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(frac: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = frac``: the optimisation starts at the float weight."""
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _layer_fn(node: Node) -> tuple[str, tuple]:
    """The layer's op and its arguments after ``(input, weight, bias)`` (stride, padding, ...)."""
    return str(node.target), tuple(node.args[3:])


def _apply(op: str, extra: tuple, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if op == "aten.linear.default":
        return F.linear(x, w, b)
    return torch.ops.aten.conv2d.default(x, w, b, *extra)


def _upto(gm: GraphModule, names: list[str]) -> GraphModule:
    """``gm`` cut after the nodes ``names``, returning their values: compiled code, not an interpreter.

    The cut graph shares ``gm``'s constants, so weights rewritten in ``gm`` are what it computes with.
    """
    graph = Graph(owning_module=gm)
    copies: dict[Node, Node] = {}
    graph.graph_copy(gm.graph, copies)
    by_name = {n.name: c for n, c in copies.items()}
    graph.output(tuple(by_name[name] for name in names))
    graph.eliminate_dead_code()
    return GraphModule(gm, graph)  # compiles once


@torch.no_grad()
def _values(gm: GraphModule, names: list[str], images: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """The values of ``names`` on ``images``, unflattened; the graph runs only as far as they need."""
    cut = _upto(gm, names)
    parts: list[list[torch.Tensor]] = [[] for _ in names]
    for start in range(0, images.shape[0], batch):
        for part, value in zip(parts, cut(images[start : start + batch].float()), strict=True):
            part.append(value.float())
    return {name: torch.cat(p) for name, p in zip(names, parts, strict=True)}


def learn_rounding(w: torch.Tensor, s: torch.Tensor, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor | None = None,
                   *, op: str = "aten.linear.default", extra: tuple = (),
                   config: AdaRoundConfig | None = None) -> tuple[torch.Tensor, float, float]:
    """One layer's learned integer weights, and its output MSE with nearest and with learned rounding.

    Args:
        w: the float weight ``[out, ...]``.
        s: its per-output-channel scales ``[out]`` (symmetric grid, integers in [-127, 127]).
        x: the layer's inputs ``[N, ...]`` (in the int8 graph: what reaches the layer).
        y: the outputs to reconstruct ``[N, out, ...]`` (the float layer's, on its float inputs).
        b: the bias (kept float), or None.
        op: ``aten.linear.default`` or ``aten.conv2d.default``.
        extra: the conv's stride, padding, dilation and groups (the node's arguments after the bias).
        config: :class:`AdaRoundConfig` (None: its defaults).

    Returns:
        ``(q, mse_nearest, mse_learned)``: ``q`` the integers (float dtype, each ``floor(w / s)`` or
        one above, clamped to [-127, 127]); the MSEs in squared output units per output element.
    """
    cfg = config or AdaRoundConfig()
    shape = (-1,) + (1,) * (w.ndim - 1)
    s = s.reshape(shape).to(w.dtype)
    base = torch.floor(w / s)
    nearest = torch.clamp(torch.round(w / s), -127, 127)
    v = _initial_v(w / s - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = x.shape[0]
    warm = int(cfg.warm_up * cfg.iterations)
    for step in range(cfg.iterations):
        idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen)
        h = _rectified_sigmoid(v)
        wq = s * torch.clamp(base + h, -127, 127)
        # AIMET's reconstruction loss: squared error summed over channels (dim 1), averaged over the rest.
        loss = (_apply(op, extra, x[idx], wq, b) - y[idx]).pow(2).sum(dim=1).mean()
        if step >= warm:
            t = (step - warm) / max(1, cfg.iterations - warm)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + torch.cos(torch.tensor(t * torch.pi)))
            loss = loss + cfg.reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = torch.clamp(base + (v >= 0).to(w.dtype), -127, 127)

        def mse(q: torch.Tensor) -> float:
            return sum(float((_apply(op, extra, x[i : i + EVAL_BATCH], s * q, b) - y[i : i + EVAL_BATCH])
                             .pow(2).sum()) for i in range(0, n, EVAL_BATCH)) / y.numel()

        return learned, mse(nearest), mse(learned)


def adaround(
    qgraph: GraphModule,
    fgraph: GraphModule,
    images: torch.Tensor,
    *,
    config: AdaRoundConfig | None = None,
    check: torch.Tensor | None = None,
    batch: int = EVAL_BATCH,
) -> dict[str, object]:
    """Learn the rounding of ``qgraph``'s per-channel int8 weights in place (see the module docstring).

    Args:
        qgraph: a converted int8 graph (``QuantizedModel.graph``); its weight constants change.
        fgraph: the float graph with the same node names (:func:`quantize.aligned.aligned_float_graph`).
        images: calibration images ``[N, 3, R, R]`` (preprocessed).
        config: iterations, batch, learning rate, regulariser (:class:`AdaRoundConfig`).
        check: images the rewrite is kept or undone on, not learned on (None: ``images``).
        batch: images per forward pass while recording.

    Returns:
        ``{"layers": [{"layer", "mse_nearest", "mse_learned", "flipped"}], "kept_layers", "sqnr_db_before",
        "sqnr_db_after", "checked_on", "kept"}``: per layer its output MSE (squared output units) under
        nearest and learned rounding on ``images`` and the share of weights rounded the other way;
        logits SQNR (dB) vs float on ``check`` before and after, and how many images that is.

    Raises:
        ValueError: a layer the float graph lacks (the graphs do not line up).
    """
    cfg = config or AdaRoundConfig()
    layers = rounded_layers(qgraph)
    fnodes = {n.name: n for n in fgraph.graph.nodes}
    missing = [layer.node.name for layer in layers if layer.node.name not in fnodes]
    if missing:
        raise ValueError(f"layer {missing[0]!r} of the int8 graph is not in the float graph: the graphs do not line up")
    check = images if check is None else check
    ref = run_graph(fgraph, check, batch=batch)[0]
    before = sqnr_db(ref, run_graph(qgraph, check, batch=batch)[0])
    targets = _values(fgraph, [layer.node.name for layer in layers], images, batch)
    originals: dict[str, torch.Tensor] = {}
    records: list[dict[str, object]] = []
    for layer in layers:
        fnode = fnodes[layer.node.name]
        w = constant(fgraph, fnode.args[1])
        stored = getattr_path(qgraph, layer.weight)
        s = getattr_path(qgraph, layer.scale)
        if w is None or w.shape != stored.shape:
            continue  # the float graph holds this weight in another form: leave it at nearest
        inp = layer.node.args[0]
        if not isinstance(inp, Node):
            continue
        x = _values(qgraph, [inp.name], images, batch)[inp.name]
        bias = constant(qgraph, layer.node.args[2]) if len(layer.node.args) > 2 else None
        op, extra = _layer_fn(layer.node)
        learned, mse_near, mse_learned = learn_rounding(
            w.detach().float(), s.detach().float(), x, targets[layer.node.name],
            None if bias is None else bias.detach().float(), op=op, extra=extra, config=cfg)
        current = stored_integers(stored, s, 0.0, layer.folded)
        record = {"layer": layer.node.name, "mse_nearest": mse_near, "mse_learned": mse_learned,
                  "flipped": float((learned != current).float().mean())}
        records.append(record)
        if mse_learned >= mse_near:
            record["flipped"] = 0.0
            continue
        originals[layer.weight] = stored.detach().clone()
        store_integers(stored, learned, s, 0.0, layer.folded)
    after = sqnr_db(ref, run_graph(qgraph, check, batch=batch)[0])
    kept = after >= before
    if not kept:
        restore(qgraph, originals)
    return {"layers": records, "kept_layers": len(originals), "sqnr_db_before": before, "sqnr_db_after": after,
            "checked_on": int(check.shape[0]), "kept": kept}


def record(report: dict[str, object], config: AdaRoundConfig, images: int) -> dict[str, object]:
    """The compact record a manifest keeps of an :func:`adaround` report (per-layer figures summed up)."""
    layers: list[dict[str, object]] = report["layers"]  # type: ignore[assignment]
    flipped = [float(r["flipped"]) for r in layers]  # type: ignore[arg-type]
    return {"config": asdict(config), "images": images, "layers": len(layers), "kept_layers": report["kept_layers"],
            "kept": report["kept"], "checked_on": report["checked_on"], "sqnr_db_before": report["sqnr_db_before"],
            "sqnr_db_after": report["sqnr_db_after"], "flipped_mean": sum(flipped) / len(flipped) if flipped else 0.0}


def summary(rec: dict[str, object]) -> str:
    """One line of a :func:`record`: layers that took learned rounding, weights flipped, kept or reverted."""
    fig = (f"logits SQNR on {rec['checked_on']} images it did not learn on "
           f"{rec['sqnr_db_before']:.1f} -> {rec['sqnr_db_after']:.1f} dB")
    if not rec["kept"]:
        return f"adaround reverted: {rec['kept_layers']} of {rec['layers']} layers would have changed, {fig}"
    steps = rec["config"]["iterations"]  # type: ignore[index]
    return (f"adaround: {rec['kept_layers']} of {rec['layers']} layers take learned rounding "
            f"({float(rec['flipped_mean']):.1%} of their weights rounded the other way on average; "  # type: ignore[arg-type]
            f"{steps} steps per layer on {rec['images']} images); {fig}")
