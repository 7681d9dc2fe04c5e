"""Quantisation-aware fine-tuning: a converted int8 graph's weights and biases trained through its own grids.

PTQ picks every grid, then rounds the float weights onto theirs; no weight learns that the
activations downstream will be rounded too. Quantisation-aware training (QAT; NNCF's and AIMET's
``QuantizationSimModel`` fine-tuning, Jacob et al. 2018) trains the weights with every quantize op
in the forward pass and the straight-through estimator in the backward pass, so the network moves
its weights to where the int8 graph computes what the float one did.

Here it fine-tunes the *converted* graph in place, by distillation, with the grids PTQ chose held
fixed (scales and zero points do not move, so every shared grid stays shared and the artifact lowers
exactly as plain int8 does):

- a trainable copy of the graph is made: every activation ``quantize_per_tensor`` ->
  ``dequantize_per_tensor`` pair becomes ``torch.fake_quantize_per_tensor_affine`` (same scale, zero
  point and limits), and every per-channel int8 weight becomes a float parameter, started at the
  float graph's weight, read through ``torch.fake_quantize_per_channel_affine`` on its own scales;
  the biases of those layers are parameters too;
- the loss is the mean over the batch of ``ln(||z_q - z_f||^2 / ||z_f||^2)``, each image's logits
  error relative to its float logits' power, in log: the mean per-image SQNR, so neither the images
  with the largest logits nor the worst ones drown the rest (:func:`log_relative_error`); given the
  SE blocks, plus ``gate_weight`` times the mean over blocks of the same term for each gate vector
  (the gates are what the logits alone let drift: see :class:`QATConfig`). No labels: the float
  graph is the teacher, so a user's own network fine-tunes on unlabelled calibration images;
- Adam on the weights and biases, the learning rate decayed to zero on a cosine;
- the learned weights are rounded onto their (unchanged) grids and written back into the graph:
  ``pte`` graphs (``fold_quantize=True``) get the int8 constant, ``tflite`` graphs (unfolded) the
  float weight ``s * q``, which their quantize node maps back to exactly ``q``.

Safeguard: the rewrite is kept only if, on images it did not train on (``check``), neither the
global logits SQNR nor the median image's falls below plain rounding's; otherwise every weight and
bias goes back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.graph import CodeGen

from quantize.adaround import rounded_layers
from quantize.aligned import constant, restore, store_integers, stored_integers
from quantize.capture import EVAL_BATCH, gate_inputs, run_graph
from quantize.metrics import logits_report
from quantize.se_pattern import SEBlock, getattr_path

_QUANTIZE_TENSOR = "quantized_decomposed.quantize_per_tensor.default"
_DEQUANTIZE_TENSOR = "quantized_decomposed.dequantize_per_tensor.default"
_DB_PER_NEPER = 10 / math.log(10)  # 10 * log10(x) = 4.343 * ln(x)


@dataclass(frozen=True)
class QATConfig:
    """How long and how fast the fine-tuning runs.

    Attributes:
        steps: Adam steps (each one forward and backward pass of the whole graph on ``batch`` images).
        batch: images per step, drawn at random from the training images.
        lr: Adam's initial learning rate on weights and biases (decayed to 0 on a cosine). The
            weights' grid steps are about 1e-3 to 1e-2, so 5e-5 moves a weight a step in tens of
            steps; 2e-4 threw timm's MobileNetV3-Large off (68% of its integers moved, reverted).
        seed: seeds the batches.
        gate_weight: weight of the SE gates' term in the loss (0: the logits alone). Trained for the
            logits alone, timm's MobileNetV3-Large gained 0.5 dB while its worst gate fell 24.7 -> 19.6 dB
            (a minimum no other figure shows); with the gates' term at 1 it gained 1.3 dB and the worst
            gate rose to 25.6 dB (auto's held-back images; results/quant_bench_auto.md).
    """

    steps: int = 300
    batch: int = 32
    lr: float = 5e-5
    seed: int = 0
    gate_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"QATConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"QATConfig.lr must be > 0, got {self.lr}")
        if not self.gate_weight >= 0 or math.isinf(self.gate_weight):
            raise ValueError(f"QATConfig.gate_weight must be >= 0 and finite, got {self.gate_weight}")


@dataclass(frozen=True)
class _Tuned:
    layer: str  # the conv/linear node's name
    weight: str  # get_attr path of the stored weight in the converted graph: int8 (folded) or float (unfolded)
    scale: str
    zero_point: str
    limits: tuple[int, int]
    folded: bool
    bias: str | None  # get_attr path of the layer's float bias, or None


def _fake_quant_tensor(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int,
                       dtype: torch.dtype) -> torch.Tensor:  # noqa: ARG001 - the quantize op's signature
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), int(qmin), int(qmax))


def _passthrough(x: torch.Tensor, *args: object) -> torch.Tensor:  # noqa: ARG001 - the dequantize op's signature
    return x


def _fake_quant_channel(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int, qmin: int,
                        qmax: int) -> torch.Tensor:
    return torch.fake_quantize_per_channel_affine(w, scale.float(), zero_point.to(torch.int32), int(axis),
                                                  int(qmin), int(qmax))


def tuned_layers(qgraph: GraphModule) -> list[_Tuned]:
    """The layers fine-tuning trains: every conv/linear whose weight is int8 per output channel, in graph order."""
    out = []
    for layer in rounded_layers(qgraph):
        dq = layer.node.args[1]
        assert isinstance(dq, Node)  # rounded_layers found it
        zp = dq.args[2]
        if not isinstance(zp, Node) or zp.op != "get_attr":
            continue
        bias = layer.node.args[2] if len(layer.node.args) > 2 else None
        bias_path = str(bias.target) if isinstance(bias, Node) and bias.op == "get_attr" else None
        out.append(_Tuned(layer.node.name, layer.weight, layer.scale, str(zp.target),
                          (int(dq.args[4]), int(dq.args[5])), layer.folded, bias_path))  # type: ignore[arg-type]
    return out


def trainable_graph(qgraph: GraphModule, fgraph: GraphModule,
                    layers: list[_Tuned]) -> tuple[GraphModule, dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """A copy of ``qgraph`` that computes with fake quantisation and trains ``layers``' weights and biases.

    Returns:
        ``(graph, weights, biases)``: the trainable graph, and its parameters by layer name.

    Raises:
        ValueError: a layer the float graph lacks (the graphs do not line up).
    """
    tg = copy.deepcopy(qgraph)
    for p in tg.parameters():
        p.requires_grad_(False)
    fnodes = {n.name: n for n in fgraph.graph.nodes}
    tnodes = {n.name: n for n in tg.graph.nodes}
    weights: dict[str, nn.Parameter] = {}
    biases: dict[str, nn.Parameter] = {}
    for i, layer in enumerate(layers):
        if layer.layer not in fnodes:
            raise ValueError(f"layer {layer.layer!r} of the int8 graph is not in the float graph: "
                             "the graphs do not line up")
        w = constant(fgraph, fnodes[layer.layer].args[1])
        stored = getattr_path(tg, layer.weight)
        if w is None or w.shape != stored.shape:
            continue  # the float graph holds this weight in another form: it stays as PTQ rounded it
        node = tnodes[layer.layer]
        dq = node.args[1]
        assert isinstance(dq, Node)
        name = f"_qat_weight_{i}"
        tg.register_parameter(name, nn.Parameter(w.detach().float().clone()))
        with tg.graph.inserting_before(node):
            param = tg.graph.get_attr(name)
            fq = tg.graph.call_function(_fake_quant_channel, (param, dq.args[1], dq.args[2], dq.args[3],
                                                              dq.args[4], dq.args[5]))
        node.replace_input_with(dq, fq)
        weights[layer.layer] = getattr(tg, name)
        if layer.bias is not None:
            owner, _, attr = layer.bias.rpartition(".")
            module = tg.get_submodule(owner) if owner else tg
            value = getattr(module, attr)
            if attr in module._buffers:
                del module._buffers[attr]
            elif hasattr(module, attr):
                delattr(module, attr)
            module.register_parameter(attr, nn.Parameter(value.detach().float().clone()))
            biases[layer.layer] = getattr(module, attr)
    quantized = set()
    for node in tg.graph.nodes:
        if node.op == "call_function" and str(node.target) == _QUANTIZE_TENSOR:
            node.target = _fake_quant_tensor
            quantized.add(node)
    for node in tg.graph.nodes:
        if (node.op == "call_function" and str(node.target) == _DEQUANTIZE_TENSOR and node.args
                and node.args[0] in quantized):
            node.target = _passthrough
    tg.graph.eliminate_dead_code()
    tg.recompile()
    return tg, weights, biases


def with_gate_outputs(tg: GraphModule, blocks: Sequence[SEBlock]) -> GraphModule:
    """``tg`` changed in place to return ``(logits, gate_1, ..., gate_n)``, called with the image batch alone.

    Each SE block's gate as its multiply takes it (:func:`quantize.capture.gate_inputs`), in ``blocks``' order.
    """
    nodes = {n.name: n for n in tg.graph.nodes}
    names = gate_inputs(tg, blocks)
    out = next(n for n in tg.graph.nodes if n.op == "output")
    first = out.args[0][0] if isinstance(out.args[0], (tuple, list)) else out.args[0]
    out.args = ((first, *(nodes[names[b.name]] for b in blocks)),)
    tg.graph._codegen = CodeGen()  # the export's pytree codegen knows one output; positional in, a tuple out
    tg.recompile()
    return tg


#: Floor of the gates' relative error in the loss: 1e-4, 40 dB, past the 30 dB target; below it an image's
#: gate term is flat (no gradient). A gate near its grid's own resolution (52 dB on test_equalize's ReLU
#: network) otherwise pulls on the weights as hard as the logits (the log's steep gradient at a tiny
#: error, or a smooth floor added to it) and was pushed down to 50 dB while the logits gained.
GATE_FLOOR = 1e-4


def gate_log_relative_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """:func:`log_relative_error` of gate vectors, each image's term flat under :data:`GATE_FLOOR` (40 dB)."""
    return torch.log(_relative_error(out, ref).clamp_min(GATE_FLOOR)).mean()


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per image (dim 0): ``||out - ref||^2 / ||ref||^2`` over everything else."""
    err = (out.flatten(1) - ref.flatten(1)).pow(2).sum(dim=1)
    return err / ref.flatten(1).pow(2).sum(dim=1).clamp_min(1e-12)


def log_relative_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``ln(||out - ref||^2 / ||ref||^2)``: minus each image's SQNR, in nepers (dB / 4.343).

    Its minimum maximises the mean per-image SQNR in dB. A linear mean (of ``||e||^2 / ||z||^2``) is
    carried by the worst images and gave up the median on timm's MobileNetV3-Large (check images'
    median 14.5 -> 8.4 dB after 20 steps); a global ratio is carried by the images with the largest
    logits. The floor (1e-8, -80 dB) keeps an exact image from giving an infinite gradient.
    """
    return torch.log(_relative_error(out, ref) + 1e-8).mean()


def _figures(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    report = logits_report(ref, out)
    return {k: float(report[k] or 0.0) for k in ("sqnr_db", "sqnr_db_median", "sqnr_db_worst")}  # never None


def write_back(qgraph: GraphModule, layers: list[_Tuned], weights: dict[str, nn.Parameter],
               biases: dict[str, nn.Parameter]) -> tuple[dict[str, torch.Tensor], float]:
    """Round the trained ``weights`` onto their grids and store them and ``biases`` in ``qgraph``.

    Returns:
        ``(originals, moved)``: the stored tensors replaced, by get_attr path (to undo the write), and
        the share of int8 weights whose integer changed.
    """
    originals: dict[str, torch.Tensor] = {}
    moved = total = 0
    by_name = {layer.layer: layer for layer in layers}
    with torch.no_grad():
        for name, w in weights.items():
            layer = by_name[name]
            stored = getattr_path(qgraph, layer.weight)
            scale, zp = getattr_path(qgraph, layer.scale), getattr_path(qgraph, layer.zero_point)
            shape = (-1,) + (1,) * (w.ndim - 1)
            q = torch.clamp(torch.round(w / scale.float().reshape(shape)) + zp.float().reshape(shape), *layer.limits)
            moved += int((q != stored_integers(stored, scale, zp, layer.folded, layer.limits)).sum())
            total += q.numel()
            originals[layer.weight] = stored.detach().clone()
            store_integers(stored, q, scale, zp, layer.folded)
            if layer.bias is not None and name in biases:
                target = getattr_path(qgraph, layer.bias)
                originals[layer.bias] = target.detach().clone()
                target.copy_(biases[name].to(target.dtype))
    return originals, moved / total if total else 0.0


def qat(
    qgraph: GraphModule,
    fgraph: GraphModule,
    images: torch.Tensor,
    *,
    config: QATConfig | None = None,
    check: torch.Tensor | None = None,
    batch: int = EVAL_BATCH,
    blocks: Sequence[SEBlock] = (),
) -> dict[str, object]:
    """Fine-tune ``qgraph``'s per-channel int8 weights and their biases in place (see the module docstring).

    Args:
        qgraph: a converted int8 graph (``QuantizedModel.graph``); its weight and bias constants change.
        fgraph: the float graph with the same node names (:func:`quantize.aligned.aligned_float_graph`),
            the teacher; not modified.
        images: the images to train on ``[N, 3, R, R]`` (preprocessed; no labels).
        config: steps, batch, learning rate, seed (:class:`QATConfig`).
        check: images the rewrite is kept or undone on, not trained on (None: ``images``).
        batch: images per forward pass while measuring.
        blocks: the SE blocks whose gates are distilled too, with ``config.gate_weight`` (none: the logits alone).

    Returns:
        ``{"layers", "trained_layers", "before", "after", "checked_on", "kept", "train_sqnr_db",
        "weights_moved"}``: ``before`` / ``after`` are the logits figures (``sqnr_db``,
        ``sqnr_db_median``, ``sqnr_db_worst``, dB) vs float on ``check`` with PTQ's rounding and with the
        fine-tuned weights; ``train_sqnr_db`` the mean per-image logits SQNR (dB) on the training
        batches of the first and of the last tenth of the steps (fake-quantised graph);
        ``weights_moved`` the share of int8 weights whose integer changed.
    """
    cfg = config or QATConfig()
    check = images if check is None else check
    layers = tuned_layers(qgraph)
    with torch.no_grad():
        ref_check = run_graph(fgraph, check, batch=batch)[0]
        before = _figures(ref_check, run_graph(qgraph, check, batch=batch)[0])
        gated = list(blocks) if cfg.gate_weight > 0 else []
        teacher, teacher_gates = run_graph(fgraph, images, gated, batch=batch)
    tg, weights, biases = trainable_graph(qgraph, fgraph, layers)
    if gated:
        with_gate_outputs(tg, gated)
    params = [*weights.values(), *biases.values()]
    losses: list[float] = []
    if params:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        n = images.shape[0]
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen)
            out = tg(images[idx].float())
            logits_loss = log_relative_error(out[0] if isinstance(out, (tuple, list)) else out, teacher[idx])
            loss = logits_loss
            if gated:  # the mean over blocks of each gate's log relative error, as the logits'
                gate_loss = sum(gate_log_relative_error(g, teacher_gates[b.name][idx])
                                for g, b in zip(out[1:], gated, strict=True))
                loss = loss + cfg.gate_weight * gate_loss / len(gated)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(logits_loss.detach()))
    originals, moved = write_back(qgraph, layers, weights, biases)
    with torch.no_grad():
        after = _figures(ref_check, run_graph(qgraph, check, batch=batch)[0])
    kept = after["sqnr_db"] >= before["sqnr_db"] and after["sqnr_db_median"] >= before["sqnr_db_median"]
    if not kept:
        restore(qgraph, originals)
    tenth = max(1, len(losses) // 10)
    return {"layers": len(layers), "trained_layers": len(weights), "before": before, "after": after,
            "checked_on": int(check.shape[0]), "kept": kept,
            "train_sqnr_db": [-_DB_PER_NEPER * sum(losses[:tenth]) / tenth,
                              -_DB_PER_NEPER * sum(losses[-tenth:]) / tenth] if losses else None,
            "weights_moved": moved}


def record(report: dict[str, object], config: QATConfig, images: int) -> dict[str, object]:
    """What a manifest keeps of a :func:`qat` report: the config, the images, the figures."""
    return {"config": asdict(config), "images": images, **report}


def summary(rec: dict[str, object]) -> str:
    """One line of a :func:`record`: what trained, how far, kept or reverted."""
    b, a = rec["before"], rec["after"]
    fig = (f"logits SQNR on {rec['checked_on']} images it did not train on {b['sqnr_db']:.1f} -> "  # type: ignore[index]
           f"{a['sqnr_db']:.1f} dB (median image {b['sqnr_db_median']:.1f} -> {a['sqnr_db_median']:.1f})")  # type: ignore[index]
    if not rec["kept"]:
        return f"qat reverted: {fig}"
    steps = rec["config"]["steps"]  # type: ignore[index]
    return (f"qat: {rec['trained_layers']} layers' weights and biases trained through their int8 grids "
            f"({steps} steps on {rec['images']} images; {float(rec['weights_moved']):.1%} of the int8 weights "  # type: ignore[arg-type]
            f"moved); {fig}")
