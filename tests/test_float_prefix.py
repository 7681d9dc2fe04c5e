"""Float prefix (quantize.float_prefix) and its choice from profiles (device_bench.op_profile.prefix_gain)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

import edge_se
from contract.formats import artifact_name
from contract.manifest import read_manifest
from device_bench.op_profile import OpEvent, Trace, prefix_gain, ranked_prefixes, unit_times
from edge_se.errors import EdgeSeError
from edge_se.init import randomize_batchnorm
from quantize import quantize_model
from quantize.core import export_graph
from quantize.float_prefix import compute_units, float_prefix, units

RES = 32  # pixels: the smallest side every family accepts


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)  # a module fixture is built under whatever RNG state the suite has reached
    return randomize_batchnorm(edge_se.build_model("mobilenetv3_small_050", num_classes=10)).eval()


@pytest.fixture(scope="module")
def graph(small_model):
    return export_graph(small_model, (torch.randn(1, 3, RES, RES),))


def test_units_follow_execution_order_and_prefix_boundary(graph):
    order = units(graph)
    # edge-se's networks: stem, then every block, then the head's modules.
    assert order[:3] == ["stem", "blocks.0", "blocks.1"] and "head" in order and order[-1] == "classifier"
    prefix = float_prefix(graph, 2)
    assert prefix is not None and prefix.units == ("stem", "blocks.0")
    nodes = {n.name: n for n in graph.graph.nodes}
    # The boundary is the first operator of blocks.1 (its expand convolution), every prefix node before it.
    assert nodes[prefix.boundary].target is torch.ops.aten.conv2d.default
    assert "blocks.1" in str(nodes[prefix.boundary].meta["nn_module_stack"])
    names = [n.name for n in graph.graph.nodes if n.op == "call_function"]
    assert list(prefix.nodes) == names[: names.index(prefix.boundary)]
    assert float_prefix(graph, 0) is None
    # One unit per convolution/linear layer, in graph order: what aligns a profile's compute operators.
    layers = compute_units(graph)
    assert layers[0] == "stem" and layers[-1] == "classifier" and layers.count("blocks.0") >= 2


@pytest.mark.parametrize("n", [-1, 10_000])
def test_bad_prefix_is_one_line_error(graph, n):
    with pytest.raises(EdgeSeError, match="--float-prefix") as exc:
        float_prefix(graph, n)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_prefix_stays_float_and_the_rest_int8(small_model, target):
    x = torch.randn(24, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    qm = quantize_model(small_model, (x[:1],), [x[:16]], target=target, policy="ptq", float_prefix=2)
    assert qm.float_prefix is not None and qm.float_prefix["units"] == ["stem", "blocks.0"]
    assert any(line.startswith("float prefix: stem, blocks.0") for line in qm.rewrites), qm.rewrites
    nodes = list(qm.graph.graph.nodes)
    convs = [n for n in nodes if n.target is torch.ops.aten.conv2d.default]
    boundary = qm.float_prefix["boundary"]
    first_int8 = next(i for i, n in enumerate(convs) if n.name == boundary)

    def weight_is_dequantized(conv):
        return "dequantize" in str(getattr(conv.args[1], "target", ""))

    # Prefix convolutions take float weights and float inputs; from the boundary on, int8.
    assert first_int8 >= 2 and not any(weight_is_dequantized(c) for c in convs[:first_int8])
    assert all(weight_is_dequantized(c) for c in convs[first_int8:])
    assert not any("dequantize" in str(getattr(a, "target", "")) for a in convs[0].args[:1])
    # Fewer quantised tensors, but not always a closer graph: the layers after the boundary are
    # calibrated on other inputs, and their ranges move. Measured (8 random images): seeded 31.47 vs
    # 31.41 dB all-int8 (pte), 31.44 vs 31.51 (tflite); another weight draw 28.98 vs 29.52 (tflite).
    # 1.5 dB allows that; a prefix that breaks the graph (a wrong boundary scale) costs > 10 dB.
    from quantize.metrics import sqnr_db

    full = quantize_model(small_model, (x[:1],), [x[:16]], target=target, policy="ptq")
    with torch.no_grad():
        ref = small_model(x[16:])
        assert sqnr_db(ref, qm.graph(x[16:])) >= sqnr_db(ref, full.graph(x[16:])) - 1.5


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("fmt", ["pte", "tflite"])
def test_float_prefix_and_float_layers_artifact_is_one_partition_and_says_so(tmp_path, fmt):
    from edge_se.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(["export", "mobilenetv3_small_050", "--format", fmt, "--dtype", "int8", "--out", str(tmp_path),
                   "--resolution", str(RES), "--calib", "random", "--float-prefix", "3",
                   "--policy", "float-sensitive", "--float-layers", "2"])
    assert rc == 0, err.getvalue()[-2000:]
    m = read_manifest(tmp_path / artifact_name("mobilenetv3_small_050", fmt, "int8"))
    assert m["quantization"]["float_prefix"]["units"] == ["stem", "blocks.0", "blocks.1"]
    # The mixed-precision islands (quantize.mixed_precision) say what they kept, in the same one partition.
    kept = m["quantization"]["float_layers"]
    assert kept["count"] == 2 and len(kept["tensors"]) == 2 and kept["fp32_nodes"], kept
    assert m["parity"]["passed"] is True
    # fp32 and int8 layers share one XNNPACK partition, nothing left outside it.
    assert m["partitions"]["partitions"] == 1 and not m["partitions"]["ops_outside_delegate"], m["partitions"]


def _trace(ms: list[tuple[str, float]]) -> Trace:
    return Trace(tuple(OpEvent(name, t, True) for name, t in ms), (sum(t for _, t in ms),), 1)


def test_prefix_gain_from_two_profiles_has_the_known_optimum():
    layers = ["stem", "b0", "b0", "b1", "head"]  # one unit per compute layer, graph order
    int8 = _trace([("Convert (NC)", 0.1), ("Convolution (NHWC, QC8) IGEMM #1", 0.6),
                   ("Fully Connected (NC, QS8, QC8W) GEMM #1", 0.5), ("Convolution (NHWC, QC8) DWConv #1", 0.4),
                   ("HardSwish (NC) #1", 0.1), ("Fully Connected (NC, QS8, QC8W) GEMM #2", 0.3),
                   ("Fully Connected (NC, QS8, QC8W) GEMM #3", 0.1)])
    fp32 = _trace([("Convolution (NHWC, F32) IGEMM #1", 0.3), ("Fully Connected (NC, F32) GEMM #1", 0.3),
                   ("Convolution (NHWC, F32) DWConv #1", 0.4), ("HardSwish (NC) #1", 0.1),
                   ("Fully Connected (NC, F32) GEMM #2", 0.5), ("Fully Connected (NC, F32) GEMM #3", 0.4)])
    a, b = unit_times(int8, layers), unit_times(fp32, layers)
    # Operators before the first compute operator (the input Convert) go to the first unit.
    assert a == pytest.approx({"stem": 0.7, "b0": 1.0, "b1": 0.3, "head": 0.1})
    assert b == pytest.approx({"stem": 0.3, "b0": 0.8, "b1": 0.5, "head": 0.4})
    rows = prefix_gain(a, b)
    assert [r["n"] for r in rows] == [0, 1, 2, 3]
    assert [r["predicted_ms"] for r in rows] == pytest.approx([2.1, 1.7, 1.5, 1.7])
    best = ranked_prefixes(rows)[0]
    assert best["n"] == 2 and best["last_unit"] == "b0"
    # A saving under min_gain is noise: no prefix.
    assert ranked_prefixes(rows, min_gain=0.5) == []
    # One artifact serves every thread count: at 2 threads (int8 scales better) the same prefixes
    # predict 1.0, 1.0, 1.2, 1.3 ms. Relative to all-int8 the means are 1, 0.905, 0.957, 1.055:
    # the stem alone, which neither table chooses by itself (1 thread: N=2; 2 threads: N=0).
    two = prefix_gain({"stem": 0.3, "b0": 0.4, "b1": 0.2, "head": 0.1},
                      {"stem": 0.3, "b0": 0.6, "b1": 0.3, "head": 0.3})
    assert [r["predicted_ms"] for r in two] == pytest.approx([1.0, 1.0, 1.2, 1.3])
    assert ranked_prefixes(two) == []
    joint = ranked_prefixes(rows, two)[0]
    assert (joint["n"], joint["last_unit"]) == (1, "stem")
    assert joint["relative"] == pytest.approx((1.7 / 2.1 + 1.0) / 2)
    assert joint["predicted_each_ms"] == pytest.approx([1.7, 1.0])
    # Every prefix worth building, best first (the candidates a run builds and times against all-int8):
    # N=1 (0.905) then N=2 (0.957); N=3 (1.055) is slower than all-int8 and never a candidate.
    ranked = ranked_prefixes(rows, two)
    assert [r["n"] for r in ranked] == [1, 2]
    assert ranked[1]["relative"] == pytest.approx((1.5 / 2.1 + 1.2) / 2)
    assert [r["n"] for r in ranked_prefixes(rows, two, min_gain=0.05)] == [1]
    with pytest.raises(EdgeSeError, match="same units"):
        ranked_prefixes(rows, two[:2])
    with pytest.raises(EdgeSeError, match="5 convolution/fully-connected operators and the network 4"):
        unit_times(int8, layers[:4])
