"""quantize.int8_ops: the rewrites keep float semantics; the annotations put every activation and gate in int8."""

from __future__ import annotations

import copy

import pytest
import torch
from test_quantize import RES, randomize_bn

import edge_se
from edge_se.errors import EdgeSeError
from quantize import quantize_model
from quantize.core import export_graph
from quantize.int8_ops import (
    REWRITES,
    TARGET_REWRITES,
    UNIT_SCALE,
    UNIT_ZERO_POINT,
    apply_rewrites,
    resolve_rewrites,
)

_aten = torch.ops.aten
# The rewrites are exact in real arithmetic; in float32 they reorder a few operations
# (x * sigmoid(x) for silu, (W / 6) s + (b / 6 + 0.5) for hard-sigmoid), so outputs agree to
# rounding: measured <= 3e-6 relative to the logits' scale; 1e-4 leaves room, a wrong rewrite
# (a missing +3, a clamp at 1 instead of 6) moves logits by tens of percent.
FLOAT_RTOL = 1e-4


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(edge_se.build_model(name, num_classes=10))


def _ops(gm: torch.fx.GraphModule) -> set[object]:
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "efficientnet_b0"])
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_rewrites_keep_float_outputs_and_node_names(name, target):
    model = _model(name)
    x = torch.randn(4, 3, RES, RES, generator=torch.Generator().manual_seed(3))
    gm = export_graph(model, (x[:1],))
    before = {n.name for n in gm.graph.nodes}
    rewritten = copy.deepcopy(gm)
    lines = apply_rewrites(rewritten, [r for r in TARGET_REWRITES[target] if r != "int8-ops"])
    assert lines, "nothing matched"
    ops = _ops(rewritten)
    assert _aten.silu.default not in ops and _aten.hardsigmoid.default not in ops
    if target == "tflite":
        assert _aten.hardswish.default not in ops, "LiteRT's delegate takes no int8 HARD_SWISH"
    assert before <= {n.name for n in rewritten.graph.nodes}, "a rewritten node lost its name"
    with torch.no_grad():
        ref, out = gm(x), rewritten(x)
    assert float((out - ref).abs().max()) <= FLOAT_RTOL * float(ref.abs().max())


def _sigmoid_quant(gm: torch.fx.GraphModule) -> list[tuple[bool, float | None]]:
    """Per sigmoid of a converted graph: (input dequantised?, output quantise scale or None)."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is _aten.sigmoid.default:
            src = n.args[0]
            users = list(n.users)
            q = next((u for u in users if "quantize_per_tensor" in str(u.target)), None)
            out.append(("dequantize" in str(src.target), None if q is None else float(q.args[1])))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_efficientnet_swish_and_gates_are_int8_only_with_rewrites(target):
    model = _model("efficientnet_b0")
    x = torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(4))
    stock = quantize_model(model, (x[:1],), [x], target=target, policy="ptq", rewrites="none")
    ours = quantize_model(model, (x[:1],), [x], target=target, policy="ptq")
    # The stock quantizers leave silu (49 in B0) unquantised: float between dequantize and quantize.
    assert any(n.target is _aten.silu.default for n in stock.graph.graph.nodes)
    sig = _sigmoid_quant(ours.graph)
    assert len(sig) == 49 + 16, "every swish and every SE gate is a sigmoid after the rewrite"
    assert all(deq and scale == pytest.approx(UNIT_SCALE) for deq, scale in sig), sig[:5]
    assert ours.int8_rewrites == TARGET_REWRITES[target]
    assert any(line.startswith("silu: 49 nodes") for line in ours.rewrites), ours.rewrites
    # Every SE mean (the squeeze) and the head's pooling are int8 in and out.
    means = [n for n in ours.graph.graph.nodes if n.op == "call_function" and n.target is _aten.mean.dim]
    assert len(means) == 17
    assert all("dequantize" in str(m.args[0].target) for m in means)
    assert all(any("quantize_per_tensor" in str(u.target) for u in m.users) for m in means)
    with torch.no_grad():
        a, b = stock.graph(x), ours.graph(x)
    # Both are int8 emulations of the same float network: they agree to quantisation noise.
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95


@pytest.mark.slow
def test_mobilenet_hardsigmoid_fold_and_hardswish_quantised():
    model = _model("mobilenetv3_small_050")
    x = torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(5))
    q = quantize_model(model, (x[:1],), [x], target="tflite", policy="ptq")
    ops = _ops(q.graph)
    assert _aten.hardswish.default not in ops and _aten.hardsigmoid.default not in ops
    # The gate of every SE block reaches its multiply on the fixed [0, 1] grid.
    nodes = {n.name: n for n in q.graph.graph.nodes}
    for b in q.se_blocks:
        dq = nodes[b.mul].args[b.gate_arg]
        assert "dequantize" in str(dq.target), b
        assert (float(dq.args[1]), int(dq.args[2])) == (pytest.approx(UNIT_SCALE), UNIT_ZERO_POINT), b
    # relu6(x + 3) is quantised after the clamp only (the ADD fuses it), on the 6/256 grid, so the
    # following * (1/6) keeps the same integers: no second rounding in a hard-sigmoid.
    clamps = [n for n in q.graph.graph.nodes if n.op == "call_function" and n.target is _aten.hardtanh.default]
    assert clamps
    for c in clamps:
        assert "quantize" not in str(c.args[0].target), "the add before the clamp was quantised on its own"
        q_out = next(u for u in c.users if "quantize_per_tensor" in str(u.target))
        assert float(q_out.args[1]) == pytest.approx(6 * UNIT_SCALE) and int(q_out.args[2]) == UNIT_ZERO_POINT
    pte = quantize_model(model, (x[:1],), [x], target="pte", policy="ptq")
    assert any(line.startswith("hardsigmoid-fold:") for line in pte.rewrites), pte.rewrites
    # pte keeps hardswish as one operator, quantised on both sides (XNNPACK has an int8 one).
    hs = [n for n in pte.graph.graph.nodes if n.op == "call_function" and n.target is _aten.hardswish.default]
    assert hs and all("dequantize" in str(n.args[0].target) for n in hs)


@pytest.mark.slow
def test_float_island_policy_keeps_its_nodes_unrewritten():
    model = _model("mobilenetv3_small_050")
    x = torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(6))
    q = quantize_model(model, (x[:1],), [x], target="tflite", policy="se-float-mul")
    nodes = {n.name: n for n in q.graph.graph.nodes}
    for b in q.se_blocks:
        assert nodes[b.gate].target is _aten.hardsigmoid.default, "an fp32 island's gate was rewritten"
        assert nodes[b.mul].args[b.gate_arg].name == b.gate, "the island's gate reached its multiply quantised"


def test_resolve_rewrites_and_errors():
    assert resolve_rewrites(None, "pte") == TARGET_REWRITES["pte"]
    assert resolve_rewrites("default", "tflite") == TARGET_REWRITES["tflite"]
    assert resolve_rewrites("none", "pte") == ()
    assert resolve_rewrites("silu, int8-ops", "pte") == ("silu", "int8-ops")
    assert set(TARGET_REWRITES["pte"]) | set(TARGET_REWRITES["tflite"]) <= set(REWRITES)
    with pytest.raises(ValueError, match="unknown int8 rewrite 'swish'; valid: head-mean"):
        resolve_rewrites("swish", "pte")
    model = _model("mobilenetv3_small_050")
    x = torch.randn(2, 3, RES, RES)
    with pytest.raises(EdgeSeError, match="unknown int8 rewrite"):
        quantize_model(model, (x[:1],), [x], target="pte", rewrites="bogus")


# Fidelity on a trained network, rewrites against the stock quantizer, both measured here. On the
# digits-trained MobileNetV3-Small at 64 px (results/quant_bench_int8_rewrites.md) the rewrites
# cost at most one image of top-1 agreement in 360 and 1.1 dB of logits SQNR. A 4-epoch
# MobileNetV3-Small-0.5 at 32 px is a rougher network with many near-tie images (measured here:
# 25.0 vs 25.2 dB and 2 images lost on tflite, 0 on pte), so the test allows 1% of the held-out
# images and 3 dB; a broken rewrite (a gate off its grid, a clamp at the wrong bound) costs tens of
# dB and most of the agreement. And the logits must stay a faithful int8 copy: >= 20 dB.
# Measured spread of (rewrites - stock) top-1 agreement on 360 held-out images: -0.012 (AVX2-only CPU,
# pte), -0.014 (AVX-512 VNNI, tflite, a fresh-clone run on 2026-12-02), and over 5 seeds x 2 kernel
# sets on a better-trained network up to 0.0083 (3 images). 0.02 (7 images) covers that spread; a
# broken rewrite (>= 5 points, or the SQNR bound below) still fails. TODO(#14): evaluate ~3000 images.
FIDELITY_MAX_AGREEMENT_LOSS = 0.02
FIDELITY_MAX_SQNR_LOSS_DB = 3.0
FIDELITY_MIN_SQNR_DB = 20.0


@pytest.fixture(scope="module")
def trained_small():
    from edge_se.data import load_images
    from edge_se.train import init_linear_layers, train

    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = edge_se.build_model("mobilenetv3_small_050", num_classes=10)
    init_linear_layers(model)
    train(model, load_images("digits", RES, split="train"), epochs=4)
    torch.set_num_threads(before)
    return model.eval(), load_images("digits", RES, split="train").images, load_images("digits", RES, split="test")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_rewrites_keep_fidelity_of_a_trained_network(trained_small, target):
    from quantize.evaluate import evaluate

    model, calib, held = trained_small
    figures = {}
    for rewrites in ("none", "default"):
        qm = quantize_model(model, (calib[:1],), [calib], target=target, policy="ptq", calib_size=64,
                            rewrites=rewrites)
        figures[rewrites] = evaluate(qm, held.images, held.labels)
    ours, stock = figures["default"], figures["none"]
    assert ours["top1_agreement"] >= stock["top1_agreement"] - FIDELITY_MAX_AGREEMENT_LOSS, (ours, stock)
    assert ours["sqnr_db"] >= stock["sqnr_db"] - FIDELITY_MAX_SQNR_LOSS_DB, (ours["sqnr_db"], stock["sqnr_db"])
    assert ours["sqnr_db"] >= FIDELITY_MIN_SQNR_DB
