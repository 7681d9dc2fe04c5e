"""Bias correction of a converted int8 graph: every conv/linear's mean output made equal to float's.

Quantising weights and upstream activations shifts the mean of each output channel (Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction", 2019; NNCF's
``FastBiasCorrection`` and ``BiasCorrection``). For every ``aten.conv2d`` / ``aten.linear`` of the
converted graph whose bias is a float constant (both PT2E quantizers edge-se uses leave the bias
fp32; the delegates requantise it to int32 at lowering), the correction adds, per output channel,

    delta_c = median over images i of ( mean(y_float[i, c]) - mean(y_int8[i, c]) )

over the calibration images (means over positions), where ``y`` is the layer's output
before its output quantize node, ``y_float`` from the float graph with the same node names
(:func:`quantize.diagnose.float_graph`) and ``y_int8`` from the converted graph.

- ``fast``: every delta from one pass of the uncorrected graph (NNCF's fast variant: each layer's
  shift measured with the error upstream left in).

Safeguards (:func:`correct_biases`): the per-channel shift is the median over images, NNCF's
per-layer threshold, and the whole correction is undone when it moves the logits away from float.
- ``full``: layer by layer in graph order, each delta measured after the layers before it were
  corrected (NNCF's full variant: upstream corrections change what reaches the layer). One forward
  pass of the converted graph per layer.

Only the bias constants change: the graph, its quantisation parameters and its node names stay, so
the exported artifact carries the corrected biases and nothing else.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.fx import GraphModule, Node

from quantize.aligned import WEIGHTED_OPS
from quantize.capture import EVAL_BATCH, Recorder, run_graph
from quantize.metrics import sqnr_db
from quantize.se_pattern import getattr_path

Mode = Literal["fast", "full"]
MODES: tuple[str, ...] = ("fast", "full")
# NNCF's thresholds on a layer's largest |shift / bias| (nncf.quantization.algorithms: 2 for the fast
# algorithm, 1000 for the full one): a layer at or over it keeps its bias.
THRESHOLDS = {"fast": 2.0, "full": 1000.0}


def corrected_layers(gm: GraphModule) -> list[tuple[Node, str]]:
    """``(layer node, bias attribute path)`` of every conv/linear of ``gm`` with a constant bias, in graph order."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target) not in WEIGHTED_OPS or len(node.args) < 3:
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
    """Per node in ``names``: each image's mean output per channel (dim 1), ``[N, C]`` float64.

    The graph runs only as far as the last wanted node (the full correction's per-layer passes
    cost half the graph on average, not all of it).
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, images.shape[0], batch):
        rec = _StoppingRecorder(gm, names, flatten=False)
        try:
            rec.run(images[start : start + batch].float())
        except _Done:
            pass
        for name, value in rec.values.items():
            v = value.double()
            v = v.reshape(v.shape[0], v.shape[1], -1).mean(dim=2) if v.ndim > 2 else v.reshape(v.shape[0], -1)
            parts[name].append(v)
    return {name: torch.cat(p) for name, p in parts.items() if p}


@torch.no_grad()
def correct_biases(
    qgraph: GraphModule,
    fgraph: GraphModule,
    images: torch.Tensor,
    *,
    mode: Mode = "full",
    batch: int = EVAL_BATCH,
) -> dict[str, object]:
    """Correct the biases of ``qgraph`` in place so each layer's channel means match ``fgraph``'s on ``images``.

    Per layer and output channel the shift is the *median over images* of (float - int8) mean
    output: a few images whose activations saturate the int8 grid (outlier inputs, or ranges
    that leave them out on purpose: ``act-outlier``) would otherwise set every image's bias. As in
    NNCF, a layer is left alone when its largest shift relative to its bias reaches
    :data:`THRESHOLDS` (or a bias entry is 0). Finally the whole correction is kept only if it
    brings the logits closer to float on ``images`` (a shifted bias can push values past the
    output grid the observers set before it); otherwise every bias is restored, and said so.

    Args:
        qgraph: a converted int8 graph (``QuantizedModel.graph``); its bias constants are changed.
        fgraph: the float graph with the same node names (:func:`quantize.diagnose.float_graph`).
        images: calibration images ``[N, 3, R, R]`` (preprocessed).
        mode: ``fast`` (one pass) or ``full`` (layer by layer; one pass per layer).
        batch: images per forward pass.

    Returns:
        ``{"mode", "layers": [{"layer", "bias", "shift_mean_abs", "shift_rel"}], "skipped",
        "sqnr_db_before", "sqnr_db_after", "kept"}``: per corrected layer the mean |shift| over
        channels (the layer's output units) and that over the mean |float output|; layers skipped
        by the threshold; logits SQNR (dB) vs float on ``images`` before and after.

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
    ref = run_graph(fgraph, images, batch=batch)[0]
    before = sqnr_db(ref, run_graph(qgraph, images, batch=batch)[0])
    names = {n.name for n, _ in layers}
    float_means = _channel_means(fgraph, names, images, batch)
    quant_means = _channel_means(qgraph, names, images, batch) if mode == "fast" else {}
    originals: dict[str, torch.Tensor] = {}
    records: list[dict[str, object]] = []
    skipped = 0
    for node, path in layers:
        if mode == "full":
            quant_means = _channel_means(qgraph, {node.name}, images, batch)
        bias = getattr_path(qgraph, path)
        delta = (float_means[node.name] - quant_means[node.name]).median(dim=0).values.to(bias.dtype)
        if delta.shape != bias.shape:
            continue  # a layer whose output channels are not its bias's (never seen in conv/linear)
        if bool((bias == 0).any()) or float((delta / bias).abs().max()) >= THRESHOLDS[mode]:
            skipped += 1
            continue
        originals[path] = bias.clone()
        bias.add_(delta)
        scale = float(float_means[node.name].mean(dim=0).abs().mean()) or 1.0
        records.append({"layer": node.name, "bias": path, "shift_mean_abs": float(delta.abs().mean()),
                        "shift_rel": float(delta.abs().mean()) / scale})
    after = sqnr_db(ref, run_graph(qgraph, images, batch=batch)[0])
    kept = after >= before
    if not kept:
        for path, value in originals.items():
            getattr_path(qgraph, path).copy_(value)
    return {"mode": mode, "layers": records, "skipped": skipped, "sqnr_db_before": before, "sqnr_db_after": after,
            "kept": kept}


def summary(report: dict[str, object]) -> str:
    """One line: how many layers were corrected, the largest relative shift, and whether it was kept."""
    records: list[dict[str, object]] = report["layers"]  # type: ignore[assignment]
    fig = f"logits SQNR on the calibration images {report['sqnr_db_before']:.1f} -> {report['sqnr_db_after']:.1f} dB"
    if not report["kept"]:
        return f"bias correction reverted: {len(records)} biases would have moved, {fig}"
    if not records:
        return f"no bias corrected ({report['skipped']} layers over the threshold)"
    top = max(records, key=lambda r: float(r["shift_rel"]))  # type: ignore[arg-type]
    return (f"{len(records)} biases corrected ({report['skipped']} skipped by the threshold); largest mean shift "
            f"{float(top['shift_rel']):.1%} of the layer's mean output ({top['layer']}); {fig}")  # type: ignore[arg-type]
