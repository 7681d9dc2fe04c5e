"""quantize: SE detection by pattern, policies, calibration selection, metrics, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import edge_se
from edge_se.errors import EdgeSeError
from edge_se.init import randomize_batchnorm
from quantize import POLICIES, find_se_blocks, quantize_model, resolve_policy
from quantize.calibration import k_center_indices, random_indices
from quantize.capture import run_graph
from quantize.core import export_graph
from quantize.int8_ops import REWRITES
from quantize.metrics import gate_error, logits_report, sqnr_db

# int8 PTQ of a small network with randomised BN: every figure measured here was >= 30 dB on
# random calibration data; 15 dB (3% error power) catches a broken graph (a wrong scale gives < 5 dB)
# without flaking on the calibration draw.
PTQ_MIN_SQNR_DB = 15.0
RES = 32  # pixels: smallest side every family accepts; keeps export and calibration fast


def _graph(model: nn.Module) -> torch.fx.GraphModule:
    return export_graph(model.eval(), (torch.randn(1, 3, RES, RES),))


@pytest.mark.parametrize(("name", "count"), [("mobilenetv3_small_100", 9), ("efficientnet_b0", 16), ("seresnet50", 16)])
def test_se_detection_edge_se_matches_modules(name, count):
    model = edge_se.build_model(name, num_classes=10)
    blocks = find_se_blocks(_graph(model))
    assert [b.name for b in blocks] == list(edge_se.se_modules(model)), "pattern names = SE module paths"
    assert len(blocks) == count
    se = edge_se.se_modules(model)
    for b in blocks:
        assert (b.channels, b.reduced) == (se[b.name].channels, se[b.name].reduced)


def test_se_detection_finds_nothing_in_no_se_twin():
    assert find_se_blocks(_graph(edge_se.build_model("mobilenetv3_small_100_nose", num_classes=10))) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("builder", "count", "gate_op"),
    [
        ("torchvision.mobilenet_v3_small", 9, "hardsigmoid"),
        ("torchvision.efficientnet_b0", 16, "sigmoid"),
        ("timm.mobilenetv3_small_100", 9, "hardsigmoid"),
        ("timm.efficientnet_b0", 16, "sigmoid"),
    ],
)
def test_se_detection_torchvision_and_timm(builder, count, gate_op):
    lib, arch = builder.split(".")
    if lib == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
        se_type = torchvision.ops.SqueezeExcitation
    else:
        import timm
        from timm.layers.squeeze_excite import SqueezeExcite as TimmSE
        from timm.models._efficientnet_blocks import SqueezeExcite as TimmEffSE

        model = timm.create_model(arch, pretrained=False, num_classes=10)
        se_type = (TimmSE, TimmEffSE)
    blocks = find_se_blocks(_graph(model))
    expected = [n for n, m in model.named_modules() if isinstance(m, se_type)]
    assert [b.name for b in blocks] == expected
    assert len(blocks) == count
    assert {b.gate_op for b in blocks} == {gate_op}


def test_se_detection_linear_se_with_views():
    class LinearSE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)

        def forward(self, x):
            s = x.mean((2, 3))
            g = torch.sigmoid(self.fc2(torch.relu(self.fc1(s)))).view(-1, 8, 1, 1)
            return g * x

    net = nn.Sequential(nn.Conv2d(3, 8, 3), LinearSE(), nn.Flatten(), nn.LazyLinear(4))
    net(torch.randn(1, 3, RES, RES))
    blocks = find_se_blocks(_graph(net))
    assert [(b.name, b.channels, b.reduced, b.gate_arg) for b in blocks] == [("1", 8, 2, 0)]


def test_gate_error_hand_made_case():
    ref = torch.tensor([[0.5, 1.0], [0.0, 0.5]])
    test = torch.tensor([[0.5, 0.75], [0.25, 0.5]])
    e = gate_error("b", ref, test)
    # |diff| = [0, .25, .25, 0]: mean .125, max .25; signal 1.5, noise .125 -> 10*log10(12) dB
    assert e["mean_abs"] == pytest.approx(0.125)
    assert e["max_abs"] == pytest.approx(0.25)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(12.0))
    # cosines: row0 (.25+.75)/(sqrt(1.25)*sqrt(.8125)); row1 .25/(.5*sqrt(.3125))
    c0 = 1.0 / (math.sqrt(1.25) * math.sqrt(0.8125))
    c1 = 0.25 / (0.5 * math.sqrt(0.3125))
    assert e["cosine"] == pytest.approx((c0 + c1) / 2)


def test_logits_report_global_vs_worst_image():
    ref = torch.tensor([[10.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    test = ref.clone()
    test[2] = torch.tensor([1.0, 0.0])  # one image flipped
    rep = logits_report(ref, test, torch.tensor([0, 0, 1]))
    assert rep["top1_agreement"] == pytest.approx(2 / 3)
    assert rep["sqnr_db_worst"] == pytest.approx(10 * math.log10(1 / 2))
    assert rep["sqnr_db"] == pytest.approx(10 * math.log10(102 / 2))  # dominated by the large image
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["float_accuracy"] == 1.0
    assert sqnr_db(ref, ref) == 200.0


def test_selection_deterministic_for_seed():
    feats = torch.randn(50, 6, generator=torch.Generator().manual_seed(3))
    a, b = k_center_indices(feats, 10, seed=1), k_center_indices(feats, 10, seed=1)
    assert a == b and len(set(a)) == 10
    assert random_indices(50, 10, 4) == random_indices(50, 10, 4)
    assert random_indices(50, 10, 4) != random_indices(50, 10, 5)
    # k-center covers the space: it picks the one far outlier.
    feats[17] = 100.0
    assert 17 in k_center_indices(feats, 3, seed=0)


def test_policy_parsing_and_conflicts():
    assert resolve_policy("gate-fixed,act-percentile").fixed_gate
    assert resolve_policy(["gate-coverage"]).selection == "gate-coverage"
    with pytest.raises(EdgeSeError, match="unknown policy 'nope'.*valid: ptq"):
        resolve_policy("ptq,nope")
    with pytest.raises(EdgeSeError, match="both set the island"):
        resolve_policy("se-float,auto")
    assert set(POLICIES) >= {"ptq", "gate-fixed", "se-float", "gate-coverage", "auto"}


@pytest.fixture(scope="module")
def small_model():
    return randomize_batchnorm(edge_se.build_model("mobilenetv3_small_050", num_classes=10))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_ptq_runs_and_is_close_to_float(small_model, target):
    x = torch.randn(24, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    qm = quantize_model(small_model, (x[:1],), [x[:16]], target=target, policy="ptq", calib_size=16)
    with torch.no_grad():
        ref, q = small_model(x[16:]), qm.graph(x[16:])
    assert sqnr_db(ref, q) >= PTQ_MIN_SQNR_DB, f"max abs err {float((ref - q).abs().max()):.4f}"
    # A pool no larger than the size: every image, said so (nothing was selected).
    assert qm.calibration == {"policy": ["ptq"], "source": "unknown", "size": 16, "pool": 16, "seed": 0,
                              "selection": "all", "indices": list(range(16))}
    assert len(qm.se_blocks) == 9
    # ptq itself rewrites nothing; every line is one of the int8 rewrites, which apply by default.
    assert qm.rewrites and all(line.split(":")[0] in REWRITES for line in qm.rewrites), qm.rewrites
    # The quantised graph really holds int8 quantise ops.
    assert any("quantize_per_tensor" in str(n.target) for n in qm.graph.graph.nodes)


@pytest.mark.slow
def test_gate_fixed_sets_gate_scale_and_se_float_keeps_excitation_float(small_model):
    x = torch.randn(16, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    fixed = quantize_model(small_model, (x[:1],), [x], target="pte", policy="gate-fixed")
    block = fixed.se_blocks[0]
    mul = next(n for n in fixed.graph.graph.nodes if n.name == block.mul)
    dq = mul.args[block.gate_arg]
    assert "dequantize" in str(dq.target) and dq.args[1] == pytest.approx(1 / 256) and dq.args[2] == -128
    # pte folds the hard-sigmoid into a clamp of fc2, which XNNPACK fuses into the convolution: its
    # one int8 output is on the gate's grid, so the reference must round fc2 there too, not first on
    # fc2's observed range (that mismatch failed the --gate-outputs parity check by 23 steps).
    for b in fixed.se_blocks:
        gate = next(n for n in fixed.graph.graph.nodes if n.name == b.gate)
        assert gate.target is torch.ops.aten.hardtanh.default, "the pte rewrite folds every hard-sigmoid"
        fc2_q = gate.args[0].args[0]
        assert "quantize_per_tensor" in str(fc2_q.target) and fc2_q.args[0].name == b.fc2
        assert (fc2_q.args[1], fc2_q.args[2]) == (pytest.approx(1 / 256), -128), b.name
    island = quantize_model(small_model, (x[:1],), [x], target="pte", policy="se-float-mul")
    nodes = {n.name: n for n in island.graph.graph.nodes}
    for b in island.se_blocks:
        gate_in = nodes[b.mul].args[b.gate_arg]
        assert gate_in.name == b.gate, "gate reaches the multiply unquantised"
    _, gates = run_graph(island.graph, x, island.se_blocks)
    _, ref = run_graph(island.reference, x, island.se_blocks)
    assert gate_error(block.name, ref[block.name], gates[block.name])["sqnr_db"] > 30.0


@pytest.mark.slow
def test_gate_coverage_is_deterministic(small_model):
    x = torch.randn(40, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    runs = [quantize_model(small_model, (x[:1],), [x], target="pte", policy="gate-coverage", calib_size=8, seed=5)
            for _ in range(2)]
    assert runs[0].calibration["selection"] == "gate-coverage"
    with torch.no_grad():
        assert torch.equal(runs[0].graph(x[:4]), runs[1].graph(x[:4]))


def test_bad_inputs_are_one_line_errors(small_model):
    x = torch.randn(2, 3, RES, RES)
    with pytest.raises(EdgeSeError, match="calib_size"):
        quantize_model(small_model, (x[:1],), [x], target="pte", calib_size=0)
    with pytest.raises(EdgeSeError, match="calibration data is empty"):
        quantize_model(small_model, (x[:1],), [], target="pte")
    with pytest.raises(EdgeSeError, match="calibration data is empty"):
        quantize_model(small_model, (x[:1],), [x[:0]], target="pte")
    with pytest.raises(EdgeSeError, match="unknown policy"):
        quantize_model(small_model, (x[:1],), [x], target="pte", policy="gate-magic")
    with pytest.raises(EdgeSeError, match="unknown target 'onnx'"):
        quantize_model(small_model, (x[:1],), [x], target="onnx")  # type: ignore[arg-type]
    with pytest.raises(EdgeSeError, match="unknown engine"):
        quantize_model(small_model, (x[:1],), [x], target="pte", engine="tvm")  # type: ignore[arg-type]


def test_bench_runs_baselines_first_resumes_and_keeps_notes(tmp_path):
    from quantize.bench import NOTES_MARKER, plan_cells, read_records, write_table

    cells = plan_cells(["a", "b"], ["se-float", "ptq"], ["pte"], ["torchao", "nncf"], {"ptq"})
    assert cells[:2] == [("a", "pte", "torchao", "ptq", "none"), ("b", "pte", "torchao", "ptq", "none")]
    assert [c[2] for c in cells][-2:] == ["nncf", "nncf"] and len(cells) == 6
    # Each rewrite setting is a cell of its own, side by side with the same cell without it.
    both = plan_cells(["a"], ["ptq"], ["pte"], ["torchao"], set(), ["default", "none"])
    assert both == [("a", "pte", "torchao", "ptq", "default"), ("a", "pte", "torchao", "ptq", "none")]
    # NNCF takes the stock quantizer only (it rejects the rewrites' fixed-parameter specs): one cell.
    assert plan_cells(["a"], ["ptq"], ["pte"], ["nncf"], {"ptq"}, ["default", "none"]) == [
        ("a", "pte", "nncf", "ptq", "none")]
    out = tmp_path / "b.jsonl"
    rec = {"model": "a", "target": "pte", "engine": "torchao", "policy": "ptq"}
    out.write_text(json.dumps({**rec, "error": "E: x"}) + "\n" + json.dumps({**rec, "sqnr_db": 30.0}) + "\n")
    records = read_records(out)
    assert len(records) == 1 and records[0]["sqnr_db"] == 30.0, "the last record of a cell wins"
    table = tmp_path / "b.md"
    table.write_text(f"old table\n{NOTES_MARKER}\nmy notes\n")
    records[0].update(sqnr_db_median=31.0, sqnr_db_worst=20.0, top1_agreement=1.0, accuracy=None,
                      gate_sqnr_db_min=None, gate_sqnr_db_median=None, quantize_seconds=1.0,
                      error_split={"sqnr_db_weights_only": 41.04, "sqnr_db_activations_only": 12.96})
    write_table(table, records)
    text = table.read_text()
    # A record without int8_rewrites was made with the stock quantizers: "none".
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| a ")]
    # The case column is empty for a model outside the suite (quantize.bench.CASES).
    assert "old table" not in text and [r[:7] for r in rows] == [["a", "", "pte", "torchao", "ptq", "none", "30.0"]]
    assert "41.0 / 13.0" in rows[0]  # logits SQNR with only the weights / only the activations int8
    assert text.endswith("my notes\n")


def test_bench_refuses_a_calibration_size_below_one(capsys):
    from quantize.bench import main as bench_main

    with pytest.raises(SystemExit):
        bench_main(["--calib-size", "0", "--models", "edge-se:mobilenetv3_small_100"])
    assert "--calib-size must be >= 1, got 0" in capsys.readouterr().err
