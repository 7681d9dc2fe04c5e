"""The PT2E quantizers edge-se uses, with the graph edits the SE-aware policies make at annotation.

One entry per artifact format in :data:`QUANTIZER_TARGETS`:

- ``pte``: ExecuTorch's ``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)``
  (int8 per-channel weights, int8 per-tensor affine activations observed with a histogram).
- ``tflite``: litert-torch's ``PT2EQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True,
  is_dynamic=False)`` (the same scheme; it also annotates sigmoid with fixed parameters).

A policy never writes its own quantizer: :func:`make_quantizer` returns a subclass of the stock
quantizer class (so ``litert_torch.convert(quant_config=QuantConfig(pt2e_quantizer=...))`` and the
XNNPACK lowering accept it as they accept the stock one) whose ``annotate`` applies
:class:`AnnotationEdits` before and after the stock annotation:

- ``float_nodes``: marked "annotated, no quantisation" first, so the stock annotators skip them and
  they stay fp32 (a mixed-precision island).
- ``fixed_gate``: SE gate outputs (and the multiply's gate input) quantised with fixed parameters
  covering [0, 1] (scale 1/256, zero point -128 in int8) instead of an observed range.
- ``own_squeeze``: SE squeezes (the pooled mean) quantised on their own observed grid. ExecuTorch's
  XNNPACK quantizer gives an average pool the grid of its input (a shared spec), so the squeeze of
  a feature map spanning [-0.3, 8] lands on a step of 0.03-0.1 while the means themselves span
  [0, 0.5..8]: 13-90 levels, the coarsest tensor of the network (``edge-se diagnose`` on timm's
  EfficientNet-B0 ``.pte``: 22-28 dB isolated, against 33-36 dB for every other activation).
  litert-torch's quantizer already gives the squeeze its own grid, so for ``.tflite`` the edit
  changes nothing. Both delegates' int8 mean requantises (XNNPACK's global average pooling and
  LiteRT's MEAN take separate input and output parameters), so the graph and its latency stay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.fx import GraphModule, Node

from contract.formats import FORMATS
from quantize.float_prefix import prefix_nodes
from quantize.int8_ops import (
    ANNOTATION_KEY,
    REWRITES,
    activation_spec,
    annotate_int8_ops,
    apply_rewrites,
    check_rewrites,
    unit_qspec,
)
from quantize.pattern_cache import cached_patterns
from quantize.se_pattern import find_se_blocks

Target = Literal["pte", "tflite"]
ACT_OBSERVERS: tuple[str, ...] = ("histogram", "minmax", "percentile", "outlier")


@dataclass(frozen=True)
class AnnotationEdits:
    """What a policy changes in the annotation of the stock quantizer.

    Attributes:
        float_nodes: names of graph nodes left unquantised (inputs and outputs stay fp32).
        fixed_gate: node names of SE gates to quantise with fixed [0, 1] parameters.
        fixed_gate_muls: ``{mul node name: gate node name}`` for the multiplies consuming them.
        own_squeeze: node names of SE squeezes (pools) to quantise on their own observed grid.
        float_before: name of a node before which every operator stays fp32, nodes the stock
            quantizer's own transform adds included (a float prefix, :mod:`quantize.float_prefix`);
            None: no prefix.
    """

    float_nodes: frozenset[str] = frozenset()
    fixed_gate: frozenset[str] = frozenset()
    fixed_gate_muls: tuple[tuple[str, str], ...] = ()
    own_squeeze: frozenset[str] = frozenset()
    float_before: str | None = None


@dataclass
class QuantizerOptions:
    """Options of the stock quantizer a policy may set.

    Attributes:
        act_observer: activation range estimator: ``histogram`` (the stock default: minimises the
            L2 quantisation error), ``minmax`` (observed extremes), ``percentile`` (clips the
            0.01% tails of the observed values).
        edits: graph edits applied at annotation (see :class:`AnnotationEdits`).
        rewrites: int8 rewrites (:data:`quantize.int8_ops.REWRITES`): graph rewrites applied in
            ``transform_for_annotation``, and ``int8-ops`` annotations after the stock ones.
        equalize: cross-layer equalisation across ReLU (:mod:`quantize.equalize`) in
            ``transform_for_annotation``, before the rewrites.
    """

    act_observer: str = "histogram"
    edits: AnnotationEdits = field(default_factory=AnnotationEdits)
    rewrites: tuple[str, ...] = ()
    equalize: bool = False


def _observer_ctr(name: str) -> Callable[..., object]:
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver

    if name == "histogram":
        return HistogramObserver
    if name == "minmax":
        return MinMaxObserver
    if name == "percentile":
        from quantize.observers import PercentileObserver

        return PercentileObserver
    if name == "outlier":
        from quantize.observers import ImageOutlierObserver

        return ImageOutlierObserver
    raise ValueError(f"unknown activation observer {name!r}; valid: {', '.join(ACT_OBSERVERS)}")


def _with_act_observer(config: object, name: str) -> object:
    """A copy of a (frozen) QuantizationConfig whose activation specs use observer ``name``."""
    if name == "histogram":
        return config  # the stock default of both quantizers
    ctr = _observer_ctr(name)
    changes = {}
    for key in ("input_activation", "output_activation"):
        spec = getattr(config, key)
        if spec is not None:
            changes[key] = dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def _apply_pre_edits(model: GraphModule, edits: AnnotationEdits) -> None:
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    for node in model.graph.nodes:
        if node.name in edits.float_nodes:
            node.meta[ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
    if edits.float_before is not None:
        for node in prefix_nodes(model, edits.float_before):
            node.meta[ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)


def _apply_post_edits(model: GraphModule, edits: AnnotationEdits, act_spec: object = None) -> None:
    """Edits after the stock annotation: own squeeze grids (``act_spec``: the observed activation spec), fixed gates."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    if edits.own_squeeze and act_spec is not None:
        for node in model.graph.nodes:
            ann = node.meta.get(ANNOTATION_KEY)
            if node.name in edits.own_squeeze and ann is not None and ann.output_qspec is not None:
                ann.output_qspec = act_spec
    if not edits.fixed_gate:
        return
    spec = unit_qspec()  # TFLite's LOGISTIC grid: scale 1/256, zero point -128
    nodes = {n.name: n for n in model.graph.nodes}
    for gate_name in edits.fixed_gate:
        gate = nodes.get(gate_name)
        if gate is None or gate_name in edits.float_nodes:
            continue
        ann = gate.meta.get(ANNOTATION_KEY)
        if ann is None:
            gate.meta[ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=spec, _annotated=True)
        else:
            ann.output_qspec = spec
        _fixed_clamp_input(gate, spec)
    for mul_name, gate_name in edits.fixed_gate_muls:
        mul, gate = nodes.get(mul_name), nodes.get(gate_name)
        if mul is None or gate is None or mul_name in edits.float_nodes:
            continue
        ann = mul.meta.get(ANNOTATION_KEY)
        if ann is not None:
            for arg in list(ann.input_qspec_map):
                if _reaches(arg, gate):
                    ann.input_qspec_map[arg] = spec


def _fixed_clamp_input(gate: Node, spec: object) -> None:
    """A gate that is a clamp to [0, 1] of an FC's output (``hardsigmoid-fold``) quantises that output on ``spec`` too.

    XNNPACK fuses the clamp into the convolution, whose int8 output then takes the clamp's
    parameters: one rounding on the fixed grid. Left on its own observed range, the FC's output
    would be rounded (and clipped at the calibration maximum) first in the PT2E reference only,
    so the artifact differs from its reference wherever a gate exceeds that maximum (measured on
    MobileNetV3-Small: up to 23 steps of 1/256 in a gate; the export parity check failed).
    """
    producer = gate.args[0] if gate.args else None
    if gate.target is not torch.ops.aten.hardtanh.default or not isinstance(producer, Node) or len(producer.users) != 1:
        return
    ann = producer.meta.get(ANNOTATION_KEY)
    if ann is not None and ann.output_qspec is not None:
        ann.output_qspec = spec
    gate_ann = gate.meta.get(ANNOTATION_KEY)
    if gate_ann is not None and producer in gate_ann.input_qspec_map:
        gate_ann.input_qspec_map[producer] = spec


def _reaches(arg: Node, gate: Node) -> bool:
    """Whether ``arg`` is ``gate`` or a shape-only view of it."""
    node: object = arg
    for _ in range(4):
        if node is gate:
            return True
        if not isinstance(node, Node) or not node.args:
            return False
        node = node.args[0]
    return False


def _policy_class(base: type) -> type:
    class PolicyQuantizer(base):  # type: ignore[misc, valid-type]
        """The stock quantizer plus edge-se's annotation edits (see module docstring)."""

        edge_se_edits: AnnotationEdits = AnnotationEdits()
        edge_se_rewrites: tuple[str, ...] = ()
        edge_se_target: str = ""
        edge_se_equalize: bool = False
        edge_se_applied: list[str] = []
        edge_se_equalized: dict[str, object] | None = None

        def transform_for_annotation(self, model: GraphModule) -> GraphModule:
            model = super().transform_for_annotation(model)
            equalized: list[str] = []
            if self.edge_se_equalize:
                from quantize.equalize import equalize, summary

                self.edge_se_equalized = equalize(model, keep=self.edge_se_edits.float_nodes)
                equalized = [summary(self.edge_se_equalized)]
            self.edge_se_applied = equalized + apply_rewrites(
                model, [r for r in self.edge_se_rewrites if r != "int8-ops"], keep=self.edge_se_edits.float_nodes)
            return model

        def annotate(self, model: GraphModule) -> GraphModule:
            _apply_pre_edits(model, self.edge_se_edits)
            with cached_patterns():  # 6.8 s of tracing per call otherwise (quantize/pattern_cache.py)
                model = super().annotate(model)
            if "int8-ops" in self.edge_se_rewrites:
                how = QUANTIZER_TARGETS.get(self.edge_se_target)
                n = annotate_int8_ops(model, self.global_config, hardswish=how is not None and how.int8_hardswish,
                                      fuse_clamp=how is not None and how.fuse_clamp)
                self.edge_se_applied = [*self.edge_se_applied, f"int8-ops: {n} nodes ({REWRITES['int8-ops']})"]
            _apply_post_edits(model, self.edge_se_edits, activation_spec(self.global_config))
            return model

    PolicyQuantizer.__name__ = PolicyQuantizer.__qualname__ = f"EdgeSe{base.__name__}"
    return PolicyQuantizer


def _xnnpack_stock() -> tuple[type, object]:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True)


def _litert_stock() -> tuple[type, object]:
    from litert_torch.quantize import pt2e_quantizer as lq

    return lq.PT2EQuantizer, lq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)


@dataclass(frozen=True)
class TargetQuantizer:
    """How one artifact format is quantised: its stock quantizer and what the ``int8-ops`` rewrite does there.

    Attributes:
        stock: returns ``(stock quantizer class, its global QuantizationConfig)``; imports the
            toolchain only when called.
        int8_hardswish: ``int8-ops`` annotates ``hardswish`` int8 (the delegate has an int8 kernel).
        fuse_clamp: ``int8-ops`` quantises an ``add`` feeding a clamp after the clamp only (the
            converter fuses them into one operator).
    """

    stock: Callable[[], tuple[type, object]]
    int8_hardswish: bool = False
    fuse_clamp: bool = False


QUANTIZER_TARGETS: dict[str, TargetQuantizer] = {
    "pte": TargetQuantizer(_xnnpack_stock, int8_hardswish=True),
    "tflite": TargetQuantizer(_litert_stock, fuse_clamp=True),
}
"""The PT2E quantizer per artifact format (keys: names of :data:`contract.formats.FORMATS`). The
exporter's backends (``export.backends``) reach it through :func:`make_quantizer`; this package does
not import them."""

TARGETS: tuple[str, ...] = tuple(t for t in FORMATS if t in QUANTIZER_TARGETS)
"""The formats with a quantizer, in :data:`contract.formats.FORMATS` order."""

_CLASSES: dict[str, type] = {}


def make_quantizer(target: str, options: QuantizerOptions | None = None) -> object:
    """The PT2E quantizer for ``target`` (a key of :data:`QUANTIZER_TARGETS`) with ``options`` applied.

    Raises:
        ValueError: an unknown target or observer, naming the valid choices.
    """
    options = options or QuantizerOptions()
    how = QUANTIZER_TARGETS.get(target)
    if how is None:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    base, config = how.stock()
    cls = _CLASSES.setdefault(base.__name__, _policy_class(base))
    quantizer = cls()
    quantizer.set_global(_with_act_observer(config, options.act_observer))
    quantizer.edge_se_edits = options.edits
    quantizer.edge_se_rewrites = check_rewrites(options.rewrites)
    quantizer.edge_se_target = target
    quantizer.edge_se_equalize = options.equalize
    return quantizer


def se_edits(gm: GraphModule, *, float_blocks: set[str] | None, float_mul: bool, fixed_gate: bool,
             own_squeeze: bool = False) -> AnnotationEdits:
    """The :class:`AnnotationEdits` for the SE blocks of ``gm``.

    Args:
        gm: the exported graph the quantizer will annotate (node names must match).
        float_blocks: names of SE blocks whose excitation stays fp32 (None: none).
        float_mul: also keep those blocks' channel multiply (and so the gate) in fp32.
        fixed_gate: quantise the remaining gates with fixed [0, 1] parameters.
        own_squeeze: quantise every SE squeeze on its own observed grid.
    """
    float_nodes: set[str] = set()
    fixed: set[str] = set()
    muls: list[tuple[str, str]] = []
    blocks = find_se_blocks(gm)
    for block in blocks:
        if float_blocks is not None and block.name in float_blocks:
            float_nodes.update(block.excitation_nodes())
            if float_mul:
                float_nodes.add(block.mul)
            elif fixed_gate:
                muls.append((block.mul, block.gate))
        elif fixed_gate:
            fixed.add(block.gate)
            muls.append((block.mul, block.gate))
    squeezes = frozenset(b.pool for b in blocks) if own_squeeze else frozenset()
    return AnnotationEdits(frozenset(float_nodes), frozenset(fixed), tuple(muls), squeezes)
