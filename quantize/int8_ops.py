"""Int8 through the whole SE network: graph rewrites before annotation, annotations after it.

The stock PT2E quantizers annotate convolutions, linears, residual adds, some multiplies and
(litert-torch) sigmoids whose input is already int8. They leave EfficientNet's ``silu``,
MobileNetV3's ``hardswish`` and ``hardsigmoid``, the SE squeeze ``mean`` and the swish multiply
unannotated, so each becomes dequantize -> float op -> quantize inside the delegate; LiteRT's
XNNPACK delegate, which takes no int8 HARD_SWISH, is even cut in two at every hard-swish
(``../shared/PLATFORM.md``). The rewrites below express those operators through ones both
delegates run in int8, without changing what the network computes in real arithmetic (int8
rounding is checked by the export parity check and by the fidelity metrics):

==================  =================================================================  ==========
rewrite             what it does                                                       targets
==================  =================================================================  ==========
``head-mean``       ``mean(x, (2, 3))`` -> ``mean(x, (2, 3), keepdim=True)`` + ``view``     pte, tflite
                    (XNNPACK pools only with ``keepdim``; exact)
``silu``            ``silu(x)`` -> ``x * sigmoid(x)`` (exact)                           pte, tflite
``hardsigmoid-fold`` ``hardsigmoid(fc2(s))`` -> ``hardtanh(fc2'(s), 0, 1)`` with fc2's      pte
                    weight and bias scaled by 1/6 and 0.5 added to the bias (exact; the
                    clamp fuses into the convolution; LiteRT's delegate takes no int8
                    RELU_0_TO_1, so not for tflite)
``hardsigmoid``     ``hardsigmoid(x)`` -> ``hardtanh(x + 3, 0, 6) * (1/6)`` (exact; on pte   pte, tflite
                    only where the fold does not apply)
``hardswish``       ``hardswish(x)`` -> ``x * (hardtanh(x + 3, 0, 6) * (1/6))`` (exact)    tflite
``int8-ops``        annotates every ``sigmoid`` (output scale 1/256, zero point -128:     pte, tflite
                    TFLite's LOGISTIC rule, and the only one XNNPACK's int8 sigmoid
                    takes), ``mul``, ``add``, ``hardtanh``, ``mean`` and (pte)
                    ``hardswish`` the stock quantizer left in float; a clamp to [0, 1]
                    and a ``hardtanh(., 0, 6) * (1/6)`` get the fixed 1/256 grid, the
                    ``hardtanh(., 0, 6)`` before it the 6/256 grid (same integers: no
                    second rounding), and (tflite) an ``add`` feeding a clamp is
                    quantised after the clamp only, so the converter fuses them
==================  =================================================================  ==========

The rewritten node keeps its name (only its operator and arguments change), so the SE block
names, gate names and the gate capture of :mod:`quantize.capture` stay valid. Where ``hardswish``
stays one operator (pte), :func:`export.backends.pte.int8_partitioner_configs` lets the XNNPACK
partitioner take it, and ``sigmoid``, in int8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch.fx import GraphModule, Node

from quantize.aligned import shared_constants
from quantize.se_pattern import SHAPE_TARGETS, getattr_path

_aten = torch.ops.aten
ANNOTATION_KEY = "quantization_annotation"

REWRITES: dict[str, str] = {
    "head-mean": "mean(keepdim=False) -> mean(keepdim=True) + view",
    "silu": "silu(x) -> x * sigmoid(x)",
    "hardsigmoid-fold": "hardsigmoid(fc2(s)) -> hardtanh(fc2'(s), 0, 1), fc2' = fc2 / 6 + 0.5",
    "hardsigmoid": "hardsigmoid(x) -> hardtanh(x + 3, 0, 6) * (1/6)",
    "hardswish": "hardswish(x) -> x * (hardtanh(x + 3, 0, 6) / 6)",
    "int8-ops": "sigmoid (1/256), mul, add, hardtanh, mean and hardswish annotated int8",
}
"""Every rewrite this module knows, with a one-line description (recorded in the manifest)."""

TARGET_REWRITES: dict[str, tuple[str, ...]] = {
    "pte": ("head-mean", "silu", "hardsigmoid-fold", "hardsigmoid", "int8-ops"),
    "tflite": ("head-mean", "silu", "hardsigmoid", "hardswish", "int8-ops"),
}
"""The rewrites applied by default per target (``pte`` keeps ``hardswish``: XNNPACK has an int8 one)."""

# A value in [0, 1] on TFLite's LOGISTIC grid: int8 -128 -> 0.0, 127 -> 0.996.
UNIT_SCALE = 1.0 / 256.0
UNIT_ZERO_POINT = -128



def check_rewrites(names: Iterable[str]) -> tuple[str, ...]:
    """Validate rewrite names.

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    out = tuple(names)
    for n in out:
        if n not in REWRITES:
            raise ValueError(f"unknown int8 rewrite {n!r}; valid: {', '.join(REWRITES)}")
    return out


def resolve_rewrites(spec: str | Iterable[str] | None, target: str) -> tuple[str, ...]:
    """The rewrite names ``spec`` stands for on ``target``.

    ``None`` or ``"default"``: :data:`TARGET_REWRITES` of the target; ``"none"`` (or empty): no
    rewrite, the stock quantizer as it is; otherwise names, a sequence or ``"a,b"``.

    Raises:
        ValueError: an unknown name or target, listing the valid ones.
    """
    if target not in TARGET_REWRITES:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGET_REWRITES)}")
    if spec is None or spec == "default":
        return TARGET_REWRITES[target]
    if spec == "none":
        return ()
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    return check_rewrites(n for n in names if n)


def check_flag(text: str, target: str = "pte") -> str:
    """Validate a ``--int8-rewrites`` value for the CLIs; return it unchanged.

    Raises:
        EdgeSeError: one line naming the flag, the bad name and the valid ones.
    """
    from edge_se.errors import EdgeSeError

    try:
        resolve_rewrites(text, target)
    except ValueError as exc:
        raise EdgeSeError(f"--int8-rewrites: {exc}") from None
    return text


# --- graph rewrites (before annotation) ---------------------------------------------------------

def _const(gm: GraphModule, value: float, like: Node, before: Node) -> Node:
    """A ``get_attr`` of a constant of ``like``'s rank (``[1, 1, 1, 1]`` for a 4-D tensor) holding ``value``.

    A rank-matched constant broadcasts in both delegates; a 0-d one would leave a dim-order copy
    outside the XNNPACK delegate.
    """
    val = like.meta.get("val")
    rank = val.dim() if isinstance(val, torch.Tensor) else 4
    index = 0
    while hasattr(gm, f"_edge_se_const_{index}"):
        index += 1
    name = f"_edge_se_const_{index}"
    gm.register_buffer(name, torch.full((1,) * rank, float(value)))
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = torch.full((1,) * rank, float(value))
    return node


def _call(gm: GraphModule, before: Node, target: Any, args: tuple[Any, ...], like: Node) -> Node:
    with gm.graph.inserting_before(before):
        node = gm.graph.call_function(target, args)
    node.meta = {k: v for k, v in like.meta.items() if k != ANNOTATION_KEY}
    return node


def _retarget(node: Node, target: Any, args: tuple[Any, ...]) -> None:
    """Give ``node`` a new operator and arguments in place: its name and users stay."""
    node.target = target
    node.args = args
    node.kwargs = {}


def _single_use_attr(gm: GraphModule, node: Any) -> bool:
    """Whether ``node`` is a constant no other operator reads (so editing it changes one layer only)."""
    return isinstance(node, Node) and node.op == "get_attr" and str(node.target) not in shared_constants(gm)


def _fold_hardsigmoid(gm: GraphModule, hs: Node) -> bool:
    """``hardsigmoid(conv(s))`` -> ``hardtanh(conv'(s), 0, 1)`` with conv' = conv / 6 + 0.5 (weights edited)."""
    fc = hs.args[0]
    if not isinstance(fc, Node) or fc.op != "call_function" or len(fc.users) != 1:
        return False
    if fc.target not in (_aten.conv2d.default, _aten.linear.default):
        return False
    weight = fc.args[1] if len(fc.args) > 1 else None
    bias = fc.args[2] if len(fc.args) > 2 else None
    if not (_single_use_attr(gm, weight) and _single_use_attr(gm, bias)):
        return False
    assert isinstance(weight, Node) and isinstance(bias, Node)
    w, b = getattr_path(gm, str(weight.target)), getattr_path(gm, str(bias.target))
    with torch.no_grad():
        w.mul_(1.0 / 6.0)
        b.mul_(1.0 / 6.0).add_(0.5)
    _retarget(hs, _aten.hardtanh.default, (fc, 0.0, 1.0))
    return True


def _pool_keepdim(gm: GraphModule, node: Node) -> bool:
    """``mean(x, (2, 3))`` of a 4-D ``x`` -> ``view(mean(x, (2, 3), keepdim=True), [-1, C])``; False if not that."""
    src, dims = node.args[0], node.args[1]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    val = src.meta.get("val") if isinstance(src, Node) else None
    if val is None or val.dim() != 4 or keepdim or node.kwargs.get("dtype") is not None \
            or not isinstance(dims, (list, tuple)) or sorted(d % 4 for d in dims if isinstance(d, int)) != [2, 3]:
        return False
    pooled = _call(gm, node, _aten.mean.dim, (src, [2, 3], True), node)
    pooled.meta["val"] = val.mean((2, 3), keepdim=True)
    # [N, C]: the batch may be symbolic (quantize exports it dynamic), the channels are not.
    _retarget(node, _aten.view.default, (pooled, [-1, int(val.shape[1])]))
    return True


def rewrite_head_means(gm: GraphModule) -> list[str]:
    """The ``head-mean`` rewrite alone, on any graph (also an ``ExportedProgram``'s, after quantisation).

    Returns:
        The names of the rewritten nodes (each now the ``view``; its name and users stay).
    """
    done = [n.name for n in list(gm.graph.nodes)
            if n.op == "call_function" and n.target is _aten.mean.dim and _pool_keepdim(gm, n)]
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def apply_rewrites(gm: GraphModule, names: Iterable[str], *, keep: Iterable[str] = ()) -> list[str]:
    """Apply the graph rewrites ``names`` (all but ``int8-ops``) to ``gm`` in place.

    Nodes named in ``keep`` (a policy's fp32 island) are left as they are: they stay in float,
    where every delegate takes them whole.

    ``gm`` must be the graph the quantizer is about to annotate (BatchNorm already folded):
    the ``hardsigmoid`` fold edits its convolution's weights, which in a PT2E copy are its own.

    Returns:
        One line per rewrite that matched, ``"name: N nodes"``.
    """
    wanted = set(check_rewrites(names))
    kept = set(keep)
    counts: dict[str, int] = {}

    def hit(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.name in kept:
            continue
        t = node.target
        if "head-mean" in wanted and t is _aten.mean.dim:
            if _pool_keepdim(gm, node):
                hit("head-mean")
        elif "silu" in wanted and t in (_aten.silu.default, _aten.silu_.default):
            x = node.args[0]
            sig = _call(gm, node, _aten.sigmoid.default, (x,), node)
            _retarget(node, _aten.mul.Tensor, (x, sig))
            hit("silu")
        elif t in (_aten.hardsigmoid.default, _aten.hardsigmoid_.default):
            if "hardsigmoid-fold" in wanted and _fold_hardsigmoid(gm, node):
                hit("hardsigmoid-fold")
            elif "hardsigmoid" in wanted:
                x = node.args[0]
                shifted = _call(gm, node, _aten.add.Tensor, (x, _const(gm, 3.0, x, node)), node)
                clamped = _call(gm, node, _aten.hardtanh.default, (shifted, 0.0, 6.0), node)
                _retarget(node, _aten.mul.Tensor, (clamped, _const(gm, 1.0 / 6.0, x, node)))
                hit("hardsigmoid")
        elif "hardswish" in wanted and t in (_aten.hardswish.default, _aten.hardswish_.default):
            x = node.args[0]
            shifted = _call(gm, node, _aten.add.Tensor, (x, _const(gm, 3.0, x, node)), node)
            clamped = _call(gm, node, _aten.hardtanh.default, (shifted, 0.0, 6.0), node)
            gate = _call(gm, node, _aten.mul.Tensor, (clamped, _const(gm, 1.0 / 6.0, x, node)), node)
            _retarget(node, _aten.mul.Tensor, (x, gate))
            hit("hardswish")
    if counts:
        gm.graph.lint()
        gm.recompile()
    return [f"{name}: {counts[name]} nodes ({REWRITES[name]})" for name in REWRITES if name in counts]


# --- annotation (after the stock quantizer) -----------------------------------------------------

def unit_qspec(top: float = 1.0) -> Any:
    """Fixed int8 parameters for a value in [0, top]: scale top/256, zero point -128."""
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=UNIT_SCALE * top, zero_point=UNIT_ZERO_POINT,
                                        quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)


def activation_spec(config: Any) -> Any:
    """The observed activation spec of a stock ``QuantizationConfig`` (its output's, else its input's)."""
    return config.output_activation or config.input_activation


def _annotated_output(node: Node) -> bool:
    ann = node.meta.get(ANNOTATION_KEY)
    return ann is not None and ann.output_qspec is not None


def _is_annotated(node: Node) -> bool:
    ann = node.meta.get(ANNOTATION_KEY)
    return ann is not None and bool(getattr(ann, "_annotated", False))


def _unit_range(node: Node) -> bool:
    """``hardtanh(x, lo, hi)`` with ``0 <= lo < hi <= 1``: its output fits the fixed [0, 1] grid."""
    if node.target is not _aten.hardtanh.default:
        return False
    lo = _num(node.args[1]) if len(node.args) > 1 else -1.0
    hi = _num(node.args[2]) if len(node.args) > 2 else 1.0
    return lo is not None and hi is not None and 0.0 <= lo < hi <= 1.0


def _num(arg: object) -> float | None:
    return float(arg) if isinstance(arg, (int, float)) else None


def _unit_gate(gm: GraphModule, node: Node) -> bool:
    """``hardtanh(., 0, 6) * (1/6)``: the hard-sigmoid of a rewrite, in [0, 1]."""
    if node.target is not _aten.mul.Tensor or len(node.args) != 2:
        return False
    a, b = node.args
    if not (isinstance(a, Node) and a.target is _aten.hardtanh.default and len(a.args) == 3
            and _num(a.args[1]) == 0.0 and _num(a.args[2]) == 6.0):
        return False
    if not (isinstance(b, Node) and b.op == "get_attr" and str(b.target).startswith("_edge_se_const_")):
        return False
    value = getattr_path(gm, str(b.target))
    return value.numel() == 1 and abs(float(value) - 1.0 / 6.0) < 1e-7


def annotate_int8_ops(gm: GraphModule, config: Any, *, hardswish: bool, fuse_clamp: bool = False) -> int:
    """Annotate the operators the stock quantizer left in float (see the module docstring).

    Args:
        gm: the graph after the stock annotation.
        config: the quantizer's global ``QuantizationConfig`` (its activation specs are reused).
        hardswish: also annotate ``hardswish`` (XNNPACK has an int8 one; LiteRT's delegate does not).
        fuse_clamp: an ``add`` whose only user is a ``hardtanh`` clamp is quantised
            after the clamp only, as the stock ``add_relu`` pattern is: the TFLite converter then
            fuses the clamp into the ADD (one operator, one rounding instead of two).

    Returns:
        The number of nodes annotated.
    """
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    act = activation_spec(config)
    const_spec = dataclasses.replace(act, observer_or_fake_quant_ctr=MinMaxObserver)
    targets = {_aten.sigmoid.default, _aten.mul.Tensor, _aten.add.Tensor, _aten.hardtanh.default, _aten.mean.dim}
    if hardswish:
        targets.add(_aten.hardswish.default)
    clamps = {_aten.hardtanh.default}  # annotated below, after the add it follows
    fused: set[Node] = set()
    done = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in targets or _is_annotated(node):
            continue
        inputs = [a for a in node.args if isinstance(a, Node)]
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        qmap = {}
        for a in inputs:
            if _annotated_output(a) or a in fused:
                continue
            qmap[a] = const_spec if a.op == "get_attr" else act
        users = list(node.users)
        out: Any
        if node.target is _aten.sigmoid.default or _unit_range(node) or _unit_gate(gm, node):
            out = unit_qspec()
        elif len(users) == 1 and _unit_gate(gm, users[0]) and users[0].args[0] is node:
            # hardtanh(., 0, 6) on a 6/256 grid: its * (1/6) on the 1/256 grid is then the same
            # integers, so the hard-sigmoid costs no second rounding.
            out = unit_qspec(6.0)
        elif (fuse_clamp and node.target is _aten.add.Tensor and len(users) == 1 and users[0].op == "call_function"
              and users[0].target in clamps and not _is_annotated(users[0])):
            out = None
            fused.add(node)
        else:
            out = act
        node.meta[ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qmap, output_qspec=out, _annotated=True)
        done += 1
    _propagate_shapes(gm)
    _consume_unit_grid(gm)
    return done


def _consume_unit_grid(gm: GraphModule) -> None:
    """A consumer of a fixed-[0, 1]-grid value (a gate) takes it as it is, not requantised to an observed range.

    Stock annotators give a multiply's inputs the observed activation spec; on an input already
    quantised with fixed parameters that would insert a second quantize (1/256 grid -> observed
    grid) between the gate and the multiply.
    """
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, SharedQuantizationSpec

    for node in gm.graph.nodes:
        ann = node.meta.get(ANNOTATION_KEY)
        if ann is None:
            continue
        for arg, spec in list(ann.input_qspec_map.items()):
            prev = arg.meta.get(ANNOTATION_KEY)
            if isinstance(spec, SharedQuantizationSpec) or prev is None:
                continue
            if isinstance(prev.output_qspec, FixedQParamsQuantizationSpec) and spec is not prev.output_qspec:
                del ann.input_qspec_map[arg]


def _propagate_shapes(gm: GraphModule) -> None:
    """Shape-only ops after an int8 output share its parameters (no requantisation between)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in SHAPE_TARGETS or _is_annotated(node):
            continue
        prev = node.args[0]
        if not isinstance(prev, Node) or not _annotated_output(prev):
            continue
        shared = SharedQuantizationSpec(prev)
        node.meta[ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={prev: shared}, output_qspec=shared,
                                                           _annotated=True)


__all__ = [
    "REWRITES",
    "TARGET_REWRITES",
    "UNIT_SCALE",
    "UNIT_ZERO_POINT",
    "activation_spec",
    "annotate_int8_ops",
    "apply_rewrites",
    "check_flag",
    "check_rewrites",
    "resolve_rewrites",
    "rewrite_head_means",
    "unit_qspec",
]
