"""Bias correction of a converted int8 graph: every conv/linear's mean output made equal to float's.

Quantising weights and upstream activations shifts the mean of each output channel (Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction", 2019; NNCF's
``FastBiasCorrection`` and ``BiasCorrection``). For every ``aten.conv2d`` / ``aten.linear`` of the
converted graph whose bias is a float constant (both PT2E quantizers edge-se uses leave the bias
fp32; the delegates requantise it to int32 at lowering), the correction adds, per output channel,

    delta_c = mean(y_float[:, c]) - mean(y_int8[:, c])

over the calibration images (mean over images and positions), where ``y`` is the layer's output
before its output quantize node, ``y_float`` from the float graph with the same node names
(:func:`quantize.diagnose.float_graph`) and ``y_int8`` from the converted graph.

- ``fast``: every delta from one pass of the uncorrected graph (NNCF's fast variant: each layer's
  shift measured with the error upstream left in).
- ``full``: layer by layer in graph order, each delta measured after the layers before it were
  corrected (NNCF's full variant: upstream corrections change what reaches the layer). One forward
  pass of the converted graph per layer.

Only the bias constants change: the graph, its quantisation parameters and its node names stay, so
the exported artifact carries the corrected biases and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch.fx import GraphModule, Node

from quantize.capture import EVAL_BATCH, Recorder
from quantize.se_pattern import getattr_path

Mode = Literal["fast", "full"]
MODES: tuple[str, ...] = ("fast", "full")
_LAYER_OPS = ("aten.conv2d.default", "aten.linear.default")


def corrected_layers(gm: GraphModule) -> list[tuple[Node, str]]:
    """``(layer node, bias attribute path)`` of every conv/linear of ``gm`` with a constant bias, in graph order."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target) not in _LAYER_OPS or len(node.args) < 3:
            continue
        bias = node.args[2]
        if isinstance(bias, Node) and bias.op == "get_attr":
            out.append((node, str(bias.target)))
    return out


class _Done(Exception):
    """Raised once every wanted node is recorded: nothing downstream needs computing."""


class _StoppingRecorder(Recorder):
    def run_node(self, n: Node) -> object:
        out = super().run_node(n)
        if len(self.values) == len(self.names):
            raise _Done
        return out


@torch.no_grad()
def _channel_means(gm: GraphModule, names: set[str], images: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """Per node in ``names``: the mean of its output over images and positions, per channel (dim 1) ``[C]`` float64.

    The graph runs only as far as the last wanted node (the full correction's per-layer passes
    cost half the graph on average, not all of it).
    """
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    for start in range(0, images.shape[0], batch):
        rec = _StoppingRecorder(gm, names, flatten=False)
        try:
            rec.run(images[start : start + batch].float())
        except _Done:
            pass
        for name, value in rec.values.items():
            v = value.double()
            dims = [d for d in range(v.ndim) if d != 1]
            s = v.sum(dim=dims)
            sums[name] = sums[name] + s if name in sums else s
            count[name] = count.get(name, 0) + v.numel() // v.shape[1]
    return {name: sums[name] / count[name] for name in sums}


@torch.no_grad()
def correct_biases(
    qgraph: GraphModule,
    fgraph: GraphModule,
    images: torch.Tensor,
    *,
    mode: Mode = "full",
    batch: int = EVAL_BATCH,
) -> list[dict[str, object]]:
    """Correct the biases of ``qgraph`` in place so each layer's channel means match ``fgraph``'s on ``images``.

    Args:
        qgraph: a converted int8 graph (``QuantizedModel.graph``); its bias constants are changed.
        fgraph: the float graph with the same node names (:func:`quantize.diagnose.float_graph`).
        images: calibration images ``[N, 3, R, R]`` (preprocessed).
        mode: ``fast`` (one pass) or ``full`` (layer by layer; one pass per layer).
        batch: images per forward pass.

    Returns:
        One record per corrected layer: ``layer``, ``bias``, ``shift_mean_abs`` (mean |delta| over
        channels, in the layer's output units) and ``shift_rel`` (that over the mean |float output|).

    Raises:
        ValueError: an unknown mode, or a layer the float graph lacks (the graphs do not line up).
    """
    if mode not in MODES:
        raise ValueError(f"unknown bias-correction mode {mode!r}; valid: {', '.join(MODES)}")
    layers = corrected_layers(qgraph)
    fnames = {n.name for n in fgraph.graph.nodes}
    missing = [n.name for n, _ in layers if n.name not in fnames]
    if missing:
        raise ValueError(f"layer {missing[0]!r} of the int8 graph is not in the float graph: the graphs do not line up")
    names = {n.name for n, _ in layers}
    float_means = _channel_means(fgraph, names, images, batch)
    quant_means = _channel_means(qgraph, names, images, batch) if mode == "fast" else {}
    records: list[dict[str, object]] = []
    for node, path in layers:
        if mode == "full":
            quant_means = _channel_means(qgraph, {node.name}, images, batch)
        bias = getattr_path(qgraph, path)
        delta = (float_means[node.name] - quant_means[node.name]).to(bias.dtype)
        if delta.shape != bias.shape:
            continue  # a layer whose output channels are not its bias's (never seen in conv/linear)
        bias.add_(delta)
        scale = float(float_means[node.name].abs().mean()) or 1.0
        records.append({"layer": node.name, "bias": path, "shift_mean_abs": float(delta.abs().mean()),
                        "shift_rel": float(delta.abs().mean()) / scale})
    return records


def summary(records: Sequence[dict[str, object]]) -> str:
    """One line: how many layers were corrected and the largest relative shift."""
    if not records:
        return "bias correction: no layer with a constant bias"
    top = max(records, key=lambda r: float(r["shift_rel"]))  # type: ignore[arg-type]
    return (f"{len(records)} biases corrected; largest mean shift {float(top['shift_rel']):.1%} "  # type: ignore[arg-type]
            f"of the layer's mean output ({top['layer']})")
