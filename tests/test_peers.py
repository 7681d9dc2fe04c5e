"""The peer benchmark's pure logic: timing aggregation, comparison table, partition analysis.

No TensorFlow and no builds here (``make bench-peers`` is a benchmark, not a test); one slow test
runs the partition readers on the tiny artifacts the device_bench tests already build.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from device_artifacts import artifacts  # noqa: E402,F401  (session fixture)

from benchmarks.peers import table, timing  # noqa: E402
from benchmarks.peers.manifests import peer_artifact_name, peer_manifest, tensor_entry  # noqa: E402
from contract.manifest import write_manifest  # noqa: E402
from contract.measure import MeasureSpec  # noqa: E402
from export import partitions  # noqa: E402

EXACT = 1e-12
"""Medians, ratios and percentages of exact binary inputs: only float rounding separates them."""

OpInfo = partitions.OpInfo



def _squeeze(md: str) -> str:
    """A markdown table with its cell padding removed (``|  a   |`` -> ``| a |``)."""
    return re.sub(r" {2,}", " ", md)

def _result(p50: float, p90: float, lo: float, n: int = 20) -> dict:
    return {"p50_ms": p50, "p90_ms": p90, "min_ms": lo, "samples": n}


# --- timing ---------------------------------------------------------------------------------------


def test_schedule_alternates_all_artifacts_every_round():
    order = timing.schedule(["A", "B", "C"], [1, 2], 2)
    assert [k for _, _, k in order] == ["A", "B", "C"] * 4
    assert [(r, t) for r, t, _ in order[:6]] == [(0, 1)] * 3 + [(0, 2)] * 3
    assert order[6][0] == 1


@pytest.mark.parametrize("rounds,threads", [(0, [1]), (1, []), (1, [0, 1])])
def test_schedule_rejects_bad_plans(rounds, threads):
    with pytest.raises(ValueError, match="must be"):
        timing.schedule(["A"], threads, rounds)


def test_parse_runner_output_takes_last_result_line():
    v1 = {"schema": "edge-se/bench/1", "latency_ms": {"p50": 2.0, "p90": 3.0, "min": 1.5, "count": 20}}
    out = "noise\n{\"other\": 1}\n" + json.dumps(v1) + "\nINFO: trailing\n"
    assert timing.parse_runner_output(out)["p50_ms"] == 2.0  # an edge-se/bench/1 line, upgraded
    bad = {**_result(5.0, 6.0, 4.0), "schema": "edge-se/bench/2"}  # no repeats, no measure: not a record
    assert timing.parse_runner_output(out + json.dumps(bad) + "\n")["p50_ms"] == 2.0
    with pytest.raises(ValueError, match="no result object"):
        timing.parse_runner_output("INFO: Created TensorFlow Lite XNNPACK delegate\n{\"x\": 1}\n")


def test_aggregate_is_median_of_round_medians():
    agg = timing.aggregate([_result(3.0, 4.0, 2.5), _result(1.0, 9.0, 0.9), _result(2.0, 5.0, 1.9)])
    assert agg["p50_ms"] == pytest.approx(2.0, abs=EXACT)
    assert agg["p90_ms"] == pytest.approx(5.0, abs=EXACT)
    assert agg["min_ms"] == pytest.approx(0.9, abs=EXACT)
    assert agg["round_p50_ms"] == [3.0, 1.0, 2.0]
    assert agg["spread_pct"] == pytest.approx(200.0, abs=EXACT)
    assert agg["samples"] == 60
    with pytest.raises(ValueError):
        timing.aggregate([])


def test_runner_command_passes_every_flag():
    spec = timing.PEER_MEASURE.replace(runs=7, warmup=3, min_seconds=0.5)
    cmd = timing.runner_command("py", "a.pte", "a.pte.json", 2, spec)
    assert cmd[:6] == ["py", "-m", "device_bench.runner", "a.pte", "--manifest", "a.pte.json"]
    assert MeasureSpec.from_argv(cmd[6:]) == spec.replace(threads=2)
    # The committed peer numbers' method: 20+ runs and >= 1 s after 5 warm-up runs, one repeat per process.
    assert (timing.PEER_MEASURE.runs, timing.PEER_MEASURE.warmup, timing.PEER_MEASURE.min_seconds,
            timing.PEER_MEASURE.repeats) == (20, 5, 1.0, 1)
    assert MeasureSpec.from_argv(timing.runner_command("py", "a", "a.json", 1)[6:]) == timing.PEER_MEASURE
    pair = timing.pair_command("py", ("a.pte", "a.json"), ("b.pte", "b.json"), 2)
    assert pair[-4:] == ["--paired-with", "b.pte", "--paired-manifest", "b.json"]
    assert MeasureSpec.from_argv(pair[6:-4]) == timing.PAIRED_MEASURE.replace(threads=2)
    assert timing.PAIRED_MEASURE.repeats % 2 == 0  # each artifact goes first in half the repeats


def _paired_record(mine: list[float], theirs: list[float]) -> dict:
    return {"p50_ms": statistics.median(mine), "repeats": [{"p50_ms": x} for x in mine],
            "paired": {"repeats": [{"p50_ms": x} for x in theirs]}}


def test_pooled_ratio_pools_every_repeat_over_rounds():
    # Round 2 ran 2x slower throughout (drift): its round medians would double, its ratios do not move.
    r1 = _paired_record([1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 0.5, 1.0])  # ratios 0.5, 1, 2, 1
    r2 = _paired_record([2.0, 2.0, 2.0, 2.0], [4.0, 2.0, 2.5, 2.0])  # ratios 0.5, 1, 0.8, 1
    pooled = timing.pooled_ratio([r1, r2])
    assert pooled["repeats"] == 8 and pooled["rounds"] == 2
    # sorted ratios 0.5 0.5 0.8 1 1 1 1 2: median 1.0; quartiles by linear interpolation 0.725 and 1.0
    assert pooled["ratio"] == pytest.approx(1.0, abs=EXACT)
    assert (pooled["ratio_q1"], pooled["ratio_q3"]) == pytest.approx((0.725, 1.0), abs=EXACT)
    assert pooled["round_ratio"] == pytest.approx([1.0, 0.9], abs=EXACT)
    # each side: the median of the rounds' repeat medians, (1 + 2) / 2 and (1 + 2.25) / 2
    assert (pooled["p50_ms"], pooled["paired_p50_ms"]) == pytest.approx((1.5, 1.625), abs=EXACT)
    with pytest.raises(ValueError, match="no paired"):
        timing.pooled_ratio([])
    with pytest.raises(ValueError, match="must pair up"):
        timing.pooled_ratio([_paired_record([1.0, 1.0], [1.0])])


@pytest.mark.export
def test_time_paired_runs_both_artifacts_in_one_process(artifacts):  # noqa: F811 - pytest fixture
    int8, fp32 = (artifacts[f"tiny_se_xnnpack_{d}.pte"] for d in ("int8", "fp32"))
    pair = ((str(int8), f"{int8}.json"), (str(fp32), f"{fp32}.json"))
    spec = timing.PAIRED_MEASURE.replace(runs=3, warmup=1, min_seconds=0.0)
    out = timing.time_paired({"p": pair, "bad": (pair[0], (str(int8), f"{fp32}.json"))}, threads=[1], rounds=2,
                             spec=spec, log=lambda s: None)
    got = out[("p", 1)]
    assert got["errors"] == [] and got["rounds"] == 2 and got["repeats"] == 2 * spec.repeats
    assert got["ratio_q1"] <= got["ratio"] <= got["ratio_q3"] and got["ratio"] > 0
    # An artifact that does not match its manifest fails in the runner: recorded, twice, never pooled.
    assert "ratio" not in out[("bad", 1)] and len(out[("bad", 1)]["errors"]) == 2


# --- table ----------------------------------------------------------------------------------------


def _art(arch, recipe, fmt, dtype, partitions=None, error=None):
    return {"key": table.artifact_key(arch, recipe, fmt, dtype), "arch": arch, "recipe": recipe, "format": fmt,
            "dtype": dtype, "artifact": f"{arch}_{recipe}_{dtype}.{fmt}", "size_bytes": 1_000_000,
            "partitions": partitions, "build_error": error}


def _timings(ms: dict[str, float], threads: int = 1) -> dict:
    return {(k, threads): {"p50_ms": v, "p90_ms": v * 1.1, "errors": []} for k, v in ms.items()}


def test_compare_ratio_best_peer_and_margin():
    arch = "mobilenetv3_large_100"
    arts = [_art(arch, r, "tflite", d) for r in ("edge-se", "litert-torch", "tf-converter") for d in ("int8", "fp32")]
    ms = {f"{arch}/edge-se/tflite/int8": 5.0, f"{arch}/edge-se/tflite/fp32": 4.0,
          f"{arch}/litert-torch/tflite/int8": 6.4, f"{arch}/litert-torch/tflite/fp32": 3.7,
          f"{arch}/tf-converter/tflite/int8": 4.0, f"{arch}/tf-converter/tflite/fp32": 3.6}
    (c,) = table.compare(arts, _timings(ms), [1])
    assert (c["arch"], c["format"], c["threads"]) == (arch, "tflite", 1)
    assert c["best_peer_int8"] == {"recipe": "tf-converter", "ms": 4.0}
    assert c["ratio"] == pytest.approx(1.25, abs=EXACT)
    assert c["target_met"] is False
    assert c["over_target_pct"] == pytest.approx(25.0, abs=1e-9)
    assert c["recipes"]["edge-se"]["int8_faster_than_fp32"] is False
    assert c["recipes"]["edge-se"]["int8_speedup"] == pytest.approx(0.8, abs=EXACT)
    assert c["recipes"]["tf-converter"]["int8_faster_than_fp32"] is False
    assert list(c["recipes"]) == ["edge-se", "litert-torch", "tf-converter"]


def test_compare_met_and_unmeasured():
    arch = "efficientnet_b0"
    arts = [_art(arch, r, "pte", d) for r in ("edge-se", "executorch") for d in ("int8", "fp32")]
    met = table.compare(arts, _timings({f"{arch}/edge-se/pte/int8": 2.0, f"{arch}/executorch/pte/int8": 2.5}), [1])[0]
    assert met["target_met"] is True and met["over_target_pct"] == 0.0
    assert met["recipes"]["edge-se"]["int8_faster_than_fp32"] is None  # fp32 not timed
    missing = table.compare(arts, _timings({f"{arch}/executorch/pte/int8": 2.5}), [1])[0]
    assert missing["ratio"] is None and missing["target_met"] is None


def _paired(pairs: dict[tuple[str, str], tuple[float, float, float]], threads: int = 1) -> dict:
    return {(table.pair_key(a, b), threads): {"ratio": r, "ratio_q1": q1, "ratio_q3": q3, "errors": []}
            for (a, b), (r, q1, q3) in pairs.items()}


def test_paired_ratios_decide_the_targets_where_measured():
    arch = "mobilenetv3_large_100"
    arts = [_art(arch, r, "tflite", d) for r in ("edge-se", "litert-torch", "tf-converter") for d in ("int8", "fp32")]
    key = {(r, d): table.artifact_key(arch, r, "tflite", d) for r in ("edge-se", "litert-torch", "tf-converter")
           for d in ("int8", "fp32")}
    others = (("edge-se", "fp32"), ("litert-torch", "int8"), ("tf-converter", "int8"))
    assert set(table.pairs(arts).values()) == {(key["edge-se", "int8"], key[o]) for o in others}
    # Round medians: int8 4.85 vs fp32 4.80 ms (0.99x, slower) and 1.01x the best peer: both missed.
    ms = {key["edge-se", "int8"]: 4.85, key["edge-se", "fp32"]: 4.80, key["litert-torch", "int8"]: 6.0,
          key["tf-converter", "int8"]: 4.8}
    unpaired = table.compare(arts, _timings(ms), [1])[0]
    assert unpaired["target_met"] is False and unpaired["recipes"]["edge-se"]["int8_faster_than_fp32"] is False
    # Paired: int8 / fp32 = 0.8 (speed-up 1.25x, quartiles 1/0.9 .. 1/0.7); vs the peers 0.7 and 0.95.
    paired = _paired({(key["edge-se", "int8"], key["edge-se", "fp32"]): (0.8, 0.7, 0.9),
                      (key["edge-se", "int8"], key["litert-torch", "int8"]): (0.7, 0.6, 0.8),
                      (key["edge-se", "int8"], key["tf-converter", "int8"]): (0.95, 0.9, 1.02)})
    (c,) = table.compare(arts, _timings(ms), [1], paired)
    edge = c["recipes"]["edge-se"]
    assert edge["paired_speedup"] == pytest.approx(1.25, abs=EXACT) and edge["int8_faster_than_fp32"] is True
    assert (edge["paired_speedup_q1"], edge["paired_speedup_q3"]) == pytest.approx((1 / 0.9, 1 / 0.7), abs=EXACT)
    # judged against the peer edge-se is closest to losing to, paired: tf-converter at 0.95x
    assert c["judged"] == {"recipe": "tf-converter", "ratio": 0.95, "paired": True} and c["target_met"] is True
    assert c["ratio"] == pytest.approx(4.85 / 4.8, abs=EXACT)  # the round medians stay in the record
    by = {f["target"]: f for f in table.target_findings([c], arts)}
    assert by["int8 faster than fp32"]["detail"].startswith("paired: fp32 / int8 1.25x (quartiles 1.11-1.43x)")
    assert "round medians: int8 4.85 ms vs fp32 4.80 ms (0.99x)" in by["int8 faster than fp32"]["detail"]
    assert by["int8 <= 1.00x best peer"]["detail"] == ("0.95x tf-converter, paired "
                                                       "(round medians: 1.01x best peer, tf-converter)")
    # A peer that could not be paired (Keras' NHWC input against edge-se's NCHW) still counts, by its round
    # medians: edge-se 4.85 against tf-converter's 4.8 ms is a miss even though litert-torch's pair is 0.7x.
    only_litert = {k: v for k, v in paired.items() if "tf-converter" not in k[0]}
    (c,) = table.compare(arts, _timings(ms), [1], only_litert)
    assert c["judged"] == {"recipe": "tf-converter", "ratio": pytest.approx(4.85 / 4.8), "paired": False}
    assert c["target_met"] is False
    finding = next(f for f in table.target_findings([c], arts) if f["target"].startswith("int8 <="))
    assert finding["detail"].startswith("1.01x tf-converter (round medians; not paired): 1% over")
    # a paired loss is a loss, whatever the round medians say
    slow = _paired({(key["edge-se", "int8"], key["edge-se", "fp32"]): (1.04, 1.0, 1.1)})
    (c,) = table.compare(arts, _timings({**ms, key["edge-se", "fp32"]: 5.5}), [1], slow)
    assert c["recipes"]["edge-se"]["int8_faster_than_fp32"] is False
    md = _squeeze(table.markdown([c], arts, table.target_findings([c], arts)))
    assert "| 1.13x | 0.96x (0.91-1.00) | **no** |" in md


def test_target_findings_say_by_how_much_and_why():
    arch = "mobilenetv3_large_100"
    rep = {"partitions": 21, "single_partition": False, "ops_outside_delegate": {"HARD_SWISH": 20},
           "float_ops_in_int8": {"ADD": 16}, "ops": {"ADD": 16, "HARD_SWISH": 20}}
    peer_rep = {"partitions": 1, "ops": {"ADD": 16, "MUL": 20}}
    arts = [_art(arch, "edge-se", "tflite", "int8", partitions=rep), _art(arch, "edge-se", "tflite", "fp32"),
            _art(arch, "litert-torch", "tflite", "int8", partitions=peer_rep),
            _art(arch, "litert-torch", "tflite", "fp32")]
    ms = {f"{arch}/edge-se/tflite/int8": 6.0, f"{arch}/edge-se/tflite/fp32": 4.0,
          f"{arch}/litert-torch/tflite/int8": 5.0}
    findings = table.target_findings(table.compare(arts, _timings(ms), [1]), arts)
    by = {f["target"]: f for f in findings}
    peer = by["int8 <= 1.00x best peer"]
    assert peer["met"] is False and "20% over" in peer["detail"] and "HARD_SWISH x20" in peer["detail"]
    assert "operators vs litert-torch: +HARD_SWISH x20, -MUL x20" in peer["detail"]
    speed = by["int8 faster than fp32"]
    assert speed["met"] is False and "50% slower" in speed["detail"]
    part = by["int8 in one delegate partition"]
    assert part["met"] is False and "21 partition(s)" in part["detail"]
    md = table.markdown(table.compare(arts, _timings(ms), [1]), arts, findings, header=["# t"])
    md = _squeeze(md)  # tabulate pads cells to the column width
    assert "| mobilenetv3_large_100 | tflite | 1 | 6.00 (6.60) |" in md
    assert "**+20%**" in md and "HARD_SWISH x20" in md


# --- partitions -----------------------------------------------------------------------------------


def test_nodes_outside_delegate_follows_the_data_flow():
    # t0 -> conv(A) -> t1 -> hswish(B) -> t2 -> conv(C) -> t3 -> add(D, internal) -> t4 ; t4 graph output
    nodes = [
        OpInfo("CONV_2D", inputs=(0, 10), outputs=(1,)),
        OpInfo("HARD_SWISH", inputs=(1,), outputs=(2,)),
        OpInfo("CONV_2D", inputs=(2, 11), outputs=(3,)),
        OpInfo("ADD", inputs=(3, 12), outputs=(4,)),
        OpInfo("DELEGATE", inputs=(0,), outputs=(1,)),     # partition 1: node 0
        OpInfo("DELEGATE", inputs=(2,), outputs=(4,)),     # partition 2: nodes 2 and 3
    ]
    assert partitions.nodes_outside_delegate(nodes, [4]) == [1]
    rep = partitions.summarize_tflite(nodes, [4], dtype="fp32")
    assert rep["partitions"] == 2 and rep["ops_outside_delegate"] == {"HARD_SWISH": 1}
    assert rep["single_partition"] is False and rep["ops_total"] == 4 and rep["float_ops_in_int8"] is None
    # A graph output made outside any partition is outside too.
    assert partitions.nodes_outside_delegate(nodes[:1] + [OpInfo("DELEGATE", inputs=(0,), outputs=(1,))], [1]) == []
    assert partitions.nodes_outside_delegate(nodes[:2] + [OpInfo("DELEGATE", inputs=(0,), outputs=(1,))], [2]) == [1]


def test_float_islands_in_int8_tflite():
    nodes = [
        OpInfo("CONV_2D", ("int8", "int8", "int32"), ("int8",), (0, 9, 8), (1,)),
        OpInfo("DEQUANTIZE", ("int8",), ("float32",), (1,), (2,)),
        OpInfo("LOGISTIC", ("float32",), ("float32",), (2,), (3,)),
        OpInfo("QUANTIZE", ("float32",), ("int8",), (3,), (4,)),
        OpInfo("DELEGATE", (), (), (0,), (4,)),
    ]
    rep = partitions.summarize_tflite(nodes, [4], dtype="int8")
    assert rep["float_ops_in_int8"] == {"LOGISTIC": 1}
    assert rep["quant_boundaries"] == 2 and rep["single_partition"] is True


def test_xnn_graph_ops_and_pte_summary():
    graph = {
        "xvalues": [
            {"xvalue_union_type": "XNNTensorValue", "xvalue_union": {"datatype": "xnn_datatype_fp32", "id_out": 0}},
            {"xvalue_union_type": "XNNQuantizedTensorValue",
             "xvalue_union": {"tensor_value": {"datatype": "xnn_datatype_qint8", "id_out": 1}}},
            {"xvalue_union_type": "XNNTensorValue", "xvalue_union": {"datatype": "xnn_datatype_fp32", "id_out": 2}},
            {"xvalue_union_type": "XNNQuantizedTensorValue",
             "xvalue_union": {"tensor_value": {"datatype": "xnn_datatype_qint8", "id_out": 3}}},
        ],
        "xnodes": [
            {"xnode_union_type": "XNNConvert", "xnode_union": {"input_id": 0, "output_id": 1, "flags": 0}},
            {"xnode_union_type": "XNNConvert", "xnode_union": {"input_id": 1, "output_id": 2, "flags": 0}},
            {"xnode_union_type": "XNNSigmoid", "xnode_union": {"input_id": 2, "output_id": 2, "flags": 0}},
            {"xnode_union_type": "XNNMultiply", "xnode_union": {"input1_id": 1, "input2_id": 3, "output_id": 3}},
            {"xnode_union_type": "XNNStaticTranspose", "xnode_union": {"input_id": 2, "output_id": 2, "perm": [0]}},
        ],
    }
    ops = partitions.xnn_graph_ops(graph)
    assert ops[3] == OpInfo("XNNMultiply", ("xnn_datatype_qint8", "xnn_datatype_qint8"), ("xnn_datatype_qint8",))
    instructions = [("kernel", "dim_order_ops::_to_dim_order_copy.out"), ("delegate", "XnnpackBackend")]
    rep = partitions.summarize_pte(instructions, [ops], dtype="int8")
    assert rep["partitions"] == 1 and rep["single_partition"] is True
    assert rep["ops_outside_delegate"] == {"dim_order_ops::_to_dim_order_copy.out": 1}
    assert rep["float_ops_in_int8"] == {"XNNSigmoid": 1}  # transpose only moves data; converts are boundaries
    assert rep["quant_boundaries"] == 2
    assert partitions.summarize_pte([], [ops], dtype="fp32")["float_ops_in_int8"] is None


def test_report_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="valid: .tflite, .pte"):
        partitions.report(tmp_path / "model.onnx")


@pytest.mark.slow
@pytest.mark.export
def test_readers_on_real_artifacts(artifacts):  # noqa: F811 - pytest fixture
    tfl = partitions.report(artifacts["tiny_se_litert_int8.tflite"], "int8")
    assert tfl["partitions"] >= 1 and tfl["ops_total"] > tfl["partitions"]
    assert isinstance(tfl["float_ops_in_int8"], dict)
    pte = partitions.report(artifacts["tiny_se_xnnpack_int8.pte"])
    assert pte["partitions"] >= 1
    assert "XNNConv2d" in pte["delegated_nodes"]
    # ExecuTorch's XNNPACK quantizer leaves sigmoid in float (PLATFORM.md): the SE gate is a float island.
    assert "XNNSigmoid" in pte["float_ops_in_int8"], pte


def test_runtime_ops_of_real_int8_artifacts(artifacts, tmp_path):  # noqa: F811 - pytest fixture
    from benchmarks.peers.runtime_ops import profile_int8
    from device_bench.op_profile import extra_ops

    arts = [{"key": f"tiny/{r}/{f}/int8", "recipe": r, "format": f, "dtype": "int8", "build_error": None,
             "artifact": str(artifacts[n])}
            for r, f, n in (("edge-se", "tflite", "tiny_se_litert_int8.tflite"),
                            ("edge-se", "pte", "tiny_se_xnnpack_int8.pte"))]
    arts.append({**arts[0], "key": "tiny/broken/tflite/int8", "artifact": str(tmp_path / "missing.tflite")})
    arts.append({**arts[0], "key": "tiny/x/tflite/fp32", "dtype": "fp32"})  # fp32: not profiled
    profile_int8(arts, tmp_path)
    tfl, pte, broken, fp32 = arts
    # XNNPACK's own operator names, layout and data types in them (the tiny .pte is per-tensor int8), from
    # each runtime's profiler
    assert any(op.startswith("Convolution (NHWC, QC8)") for op in tfl["runtime_ops"]), tfl["runtime_ops"]
    assert any(op.startswith("Convolution (NHWC, QS8)") for op in pte["runtime_ops"]), pte["runtime_ops"]
    assert extra_ops(tfl["runtime_ops"], tfl["runtime_ops"]) == []
    assert "runtime_ops" not in broken and broken["runtime_ops_error"]
    assert "runtime_ops" not in fp32 and "runtime_ops_error" not in fp32


# --- manifests ------------------------------------------------------------------------------------


def test_peer_names_and_manifest_load_in_the_runner(tmp_path):
    from device_bench.manifest import load_manifest, verify_artifact

    assert peer_artifact_name("efficientnet_b0", "tf-converter", "int8", "tflite") == \
        "efficientnet_b0_tf-converter_int8.tflite"
    with pytest.raises(ValueError, match="unknown recipe/format executorch/tflite; valid: .*executorch/pte"):
        peer_artifact_name("efficientnet_b0", "executorch", "int8", "tflite")
    with pytest.raises(ValueError, match="valid: efficientnet_b0"):
        peer_artifact_name("resnet50", "executorch", "int8", "pte")
    art = tmp_path / peer_artifact_name("efficientnet_b0", "tf-converter", "int8", "tflite")
    art.write_bytes(b"not really a model")
    doc = peer_manifest(art, fmt="tflite", dtype="int8", arch="efficientnet_b0", recipe="tf-converter",
                        resolution=224, inputs=[tensor_entry("input_0", [1, 224, 224, 3], "int8", layout="NHWC",
                                                             scale=0.5, zero_point=-3)],
                        outputs=[tensor_entry("output_0", [1, 1000], "int8", scale=0.1, zero_point=0)],
                        source="keras.applications.EfficientNetB0", versions={})
    write_manifest(art, doc)
    m = load_manifest(art.with_name(art.name + ".json"))
    assert verify_artifact(art, m) == doc["sha256"]
    assert m.inputs[0].scale == 0.5 and m.inputs[0].zero_point == -3 and m.dtype == "int8"


def test_results_round_trip_through_jsonl(tmp_path):
    from benchmarks.peers import run

    arch = "efficientnet_b0"
    rep = {"kind": "pte", "partitions": 1, "single_partition": True, "delegated_nodes": {"XNNConv2d": 3},
           "ops_outside_delegate": {}, "float_ops_in_int8": {"XNNSigmoid": 2}}
    arts = [_art(arch, "edge-se", "pte", "int8", partitions=rep), _art(arch, "executorch", "pte", "int8"),
            _art(arch, "edge-se", "pte", "fp32", error="edge-se export exit 1: parity check failed")]
    ms = {f"{arch}/edge-se/pte/int8": 3.0, f"{arch}/executorch/pte/int8": 2.0}
    meta = {"started": "t0", "finished": "t1", "commit": None,
            "machine": {"cpu_model": "x", "machine": "x86_64", "cpu_count": 2, "cpu_flags": "avx avx2 fma"},
            "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [2.0, 2.0, 2.0], "resolution": 224, "rounds": 1,
            "threads": [1], "runner": {"runs": 5, "warmup": 1, "min_seconds": 0.1},
            "float_prefix": {f"{arch}/pte": {"n": 3, "last_unit": "blocks.1", "predicted_ms": 7.7, "int8_ms": 8.3,
                                             "fp32_ms": 8.2, "rebuilt": True},
                             f"{arch}/tflite": {"n": 0}}}
    meta["paired_runner"] = timing.PAIRED_MEASURE.to_dict()
    pair = (f"{arch}/edge-se/pte/int8", f"{arch}/executorch/pte/int8")
    _, md = run.write_results(tmp_path, arts, _timings(ms), [1], meta, _paired({pair: (1.4, 1.3, 1.5)}))
    first = md.read_text()
    assert "Paired: edge-se int8 against its fp32 and each peer's int8" in first
    # The CPU flags decide int8 speed, and the float prefix chosen on them: both in the header.
    assert "x (x86_64, 2 logical CPUs); flags: avx avx2 fma" in first
    # a record from before the choice covered several thread counts: it was made at 1 thread
    assert ("at 1 thread(s) of edge-se's own all-int8 and fp32 artifacts" in first
            and "efficientnet_b0/pte: first 3 units fp32 (through blocks.1; predicted 7.70 vs 8.30 ms all-int8 (1T); "
            "fp32 8.20 ms); efficientnet_b0/tflite: all int8.") in first
    from benchmarks.peers.float_prefix import header_line

    both = {"n": 2, "last_unit": "blocks.0", "threads": [1, 2], "fp32_ms": 8.0,
            "by_threads": {"1": {"predicted_ms": 7.0, "int8_ms": 8.0}, "2": {"predicted_ms": 4.5, "int8_ms": 4.6}}}
    assert header_line({"m/pte": both}).endswith(
        "at 1 and 2 thread(s) of edge-se's own all-int8 and fp32 artifacts, the lowest mean predicted latency "
        "relative to all-int8 (`benchmarks/peers/float_prefix.py`): m/pte: first 2 units fp32 (through blocks.0; "
        "predicted 7.00 vs 8.00 ms all-int8 (1T), 4.50 vs 4.60 ms all-int8 (2T)).")
    cells = _squeeze(first)  # tabulate pads cells to the column width
    assert "| 1.50x | executorch 1.40x | **+40%** |" in cells and "build failed: edge-se export exit 1" in cells
    assert "| efficientnet_b0/edge-se/pte/int8 | 1.0 | 1 | 3 | none | XNNSigmoid x2 |" in cells
    run.rerender(tmp_path)
    assert md.read_text() == first


def test_a_peer_that_runs_every_operator_edge_se_runs_is_a_tie():
    arch = "efficientnet_b0"
    conv, mean, fc = "Convolution (NHWC, QC8) IGEMM", "Mean (ND) Reduce", "Fully Connected (NC, QS8, QC8W) GEMM"
    arts = [_art(arch, r, "tflite", d) for r in ("edge-se", "litert-torch", "tf-converter") for d in ("int8", "fp32")]
    ops = {"edge-se": [conv, mean, fc], "tf-converter": [conv, mean, "Static Reshape (NC)", fc],
           "litert-torch": ["Transpose (ND, X8) Transpose", conv, mean, fc]}
    for a in arts:
        if a["dtype"] == "int8":
            a["runtime_ops"] = ops[a["recipe"]]
    key = {r: table.artifact_key(arch, r, "tflite", "int8") for r in ops}
    # paired 1.01x against tf-converter (a miss by the ratio), 0.8x against litert-torch
    paired = _paired({(key["edge-se"], key["tf-converter"]): (1.01, 0.99, 1.03),
                      (key["edge-se"], key["litert-torch"]): (0.8, 0.78, 0.82)})
    ms = {key["edge-se"]: 10.1, key["tf-converter"]: 10.0, key["litert-torch"]: 12.5}
    (c,) = table.compare(arts, _timings(ms), [1], paired)
    assert c["tie"] is True and c["target_met"] is True
    assert c["ties"] == [{"recipe": "tf-converter", "ops": 3, "peer_ops": 4, "peer_extra": {"Static Reshape (NC)": 1}}]
    finding = next(f for f in table.target_findings([c], arts) if f["target"].startswith("int8 <="))
    assert finding["tie"] is True
    assert finding["detail"] == ("1.01x tf-converter, paired (round medians: 1.01x best peer, tf-converter): 1% over, "
                                 "a tie: edge-se ran 3 runtime operators, a subsequence of tf-converter's 4 "
                                 "(tf-converter also ran: Static Reshape (NC) x1)")
    cells = _squeeze(table.markdown([c], arts, table.target_findings([c], arts)))
    assert "| tie (+1%) |" in cells and "| int8 <= 1.00x best peer | efficientnet_b0 .tflite 1T | tie |" in cells
    # edge-se running one operator the peer does not (an input transpose) is no tie, whatever the ratio
    arts[0]["runtime_ops"] = ["Transpose (ND, X8) Transpose", conv, mean, fc]
    (c,) = table.compare(arts, _timings(ms), [1], paired)
    assert c["tie"] is False and c["target_met"] is False and c["ties"] == []
    # nor is a pair whose operators were not profiled
    del arts[0]["runtime_ops"]
    assert table.compare(arts, _timings(ms), [1], paired)[0]["target_met"] is False


def test_op_diff_names_what_one_graph_has_more_of():
    ours = {"kind": "tflite", "ops": {"CONV_2D": 65, "PAD": 5, "TRANSPOSE": 1}}
    theirs = {"kind": "tflite", "ops": {"CONV_2D": 65, "MUL": 2}}
    assert partitions.op_diff(ours, theirs) == "+PAD x5, +TRANSPOSE x1, -MUL x2"
    assert partitions.op_diff(ours, ours) == "the same operators"
    pte = {"kind": "pte", "delegated_nodes": {"XNNConv2d": 3}, "ops_outside_delegate": {"aten.add.out": 1}}
    assert partitions.op_histogram(pte) == {"XNNConv2d": 3, "aten.add.out": 1}


# --- float prefix: predicted, then measured --------------------------------------------------------


def _pooled(ratio: float) -> dict:
    return {"ratio": ratio, "ratio_q1": ratio - 0.01, "ratio_q3": ratio + 0.01, "repeats": 12, "errors": []}


def test_verdict_adopts_only_what_is_faster_at_every_thread_count():
    from benchmarks.peers.float_prefix import verdict

    assert verdict({"1": _pooled(0.95), "2": _pooled(0.97)}) == (True, "measured 0.950x (1T), 0.970x (2T) of all-int8")
    # faster on average (0.965) but slower at 2 threads: the one artifact serves both, so not adopted
    adopt, why = verdict({"1": _pooled(0.92), "2": _pooled(1.01)})
    assert not adopt and why.endswith("not faster at 2 thread(s)")
    # faster at both but by 0.5% on average: within a paired timing's quartiles here
    adopt, why = verdict({"1": _pooled(0.994), "2": _pooled(0.996)})
    assert not adopt and "mean saving 0.5% < 1%" in why
    adopt, why = verdict({"1": _pooled(0.9), "2": {"errors": ["runner exit 1: boom"]}})
    assert not adopt and why == "paired timing failed at 2 thread(s): runner exit 1: boom"
    assert verdict({}) == (False, "not timed")


def test_candidates_are_spaced_best_predicted_first():
    from benchmarks.peers.float_prefix import candidates

    ranked = [{"n": n, "last_unit": f"blocks.{n}", "relative": rel, "predicted_each_ms": [rel]}
              for n, rel in [(14, 0.90), (13, 0.91), (15, 0.92), (8, 0.95), (2, 0.96)]]
    # 13 and 15 are within 3 units of 14: the second try tests another depth
    assert [c["n"] for c in candidates(ranked)] == [14, 8]
    assert [c["n"] for c in candidates(ranked, limit=3)] == [14, 8, 2]
    assert candidates([]) == []


def _prefix_run(tmp_path):
    """An artifacts folder with a (fake) all-int8 .pte, its fp32 twin, and a prediction of two candidates."""
    from contract.formats import artifact_name

    edge = tmp_path / "edge_se"
    edge.mkdir()
    target = edge / artifact_name("m", "pte", "int8")
    for suffix, text in (("", "all-int8"), (".parity.npz", "all-int8 parity"), (".json", "{}")):
        target.with_name(target.name + suffix).write_text(text)
    (edge / artifact_name("m", "pte", "fp32")).write_text("fp32")
    by = {t: {"int8_ms": 10.0 / int(t), "fp32_ms": 11.0 / int(t)} for t in ("1", "2")}
    choice = {"n": 0, "threads": [1, 2], "by_threads": by, "int8_ms": 10.0, "fp32_ms": 11.0, "min_gain": 0.03,
              "max_fp32_mac_share": 0.5,
              "over_share": {"n": 17, "last_unit": "head", "relative": 0.85, "fp32_mac_share": 0.988},
              "candidates": [{"n": 14, "last_unit": "blocks.12", "relative": 0.9, "predicted_each_ms": [9.0, 4.5],
                              "fp32_mac_share": 0.45},
                             {"n": 8, "last_unit": "blocks.6", "relative": 0.95, "predicted_each_ms": [9.5, 4.75],
                              "fp32_mac_share": 0.12}]}
    return target, choice


def test_settle_adopts_the_first_candidate_measured_faster(tmp_path):
    from benchmarks.peers.float_prefix import header_line, settle

    target, choice = _prefix_run(tmp_path)
    ratios = {14: (1.02, 0.95), 8: (0.97, 0.96)}  # the best predicted loses at 1 thread, the second wins
    built, timed = [], []

    def build(n, folder):
        built.append(n)
        folder.mkdir(parents=True)
        for suffix in ("", ".parity.npz", ".json"):
            (folder / (target.name + suffix)).write_text(f"N={n}{suffix}")
        return None

    def measure(cand, base):
        timed.append((cand.parent.name, base))
        n = int(cand.parent.name.rsplit("_n", 1)[1])
        return {"1": _pooled(ratios[n][0]), "2": _pooled(ratios[n][1])}

    got = settle(tmp_path, "m", "pte", choice, build=build, measure=measure)
    assert built == [14, 8] and timed == [("m_pte_n14", target), ("m_pte_n8", target)]
    assert (got["n"], got["last_unit"], got["predicted_ms"]) == (8, "blocks.6", 9.5)
    assert [(t["n"], t["adopted"]) for t in got["tried"]] == [(14, False), (8, True)]
    assert got["tried"][0]["measured"]["1"]["ratio"] == 1.02 and "not faster at 1" in got["tried"][0]["why"]
    assert got["by_threads"]["2"]["predicted_ms"] == 4.75
    # the adopted candidate replaced the all-int8 artifact, parity data and manifest; no candidate is left
    assert [target.with_name(target.name + s).read_text() for s in ("", ".parity.npz", ".json")] == [
        "N=8", "N=8.parity.npz", "N=8.json"]
    assert not any((tmp_path / "float_prefix" / "candidates").iterdir())
    line = header_line({"m/pte": got})
    assert "then each candidate built and timed paired against all-int8" in line
    assert "adopted only if faster at each (a prefix keeps at most 50% of the MACs fp32)" in line
    assert "m/pte: first 8 units fp32 (through blocks.6; predicted 9.50 vs 10.00 ms all-int8 (1T), 4.75 vs 5.00 ms " \
           "all-int8 (2T)), 12.0% of MACs fp32, measured 0.970x (1T), 0.960x (2T) of all-int8 [best predicted N=17 " \
           "(through head, 0.850x) not built: 98.8% of MACs fp32, over the 50% cap]." in line


def test_settle_keeps_all_int8_when_no_candidate_wins(tmp_path):
    from benchmarks.peers.float_prefix import header_line, settle

    target, choice = _prefix_run(tmp_path)

    def build(n, folder):
        if n == 8:
            return "edge-se export --float-prefix 8 exit 1: parity check failed"
        folder.mkdir(parents=True)
        for suffix in ("", ".parity.npz", ".json"):
            (folder / (target.name + suffix)).write_text("candidate")
        return None

    got = settle(tmp_path, "m", "pte", choice, build=build,
                 measure=lambda cand, base: {"1": _pooled(0.99), "2": _pooled(1.04)})
    assert got["n"] == 0 and got["last_unit"] is None
    assert [t["why"] for t in got["tried"]] == [
        "measured 0.990x (1T), 1.040x (2T) of all-int8: not faster at 2 thread(s)",
        "edge-se export --float-prefix 8 exit 1: parity check failed"]
    assert target.read_text() == "all-int8"  # untouched
    assert header_line({"m/pte": {k: v for k, v in got.items() if k != "over_share"}}).endswith(
        "m/pte: all int8 (N=14 predicted 0.900x, measured 0.990x (1T), 1.040x (2T) of all-int8: not faster at 2 "
        "thread(s); N=8 predicted 0.950x, edge-se export --float-prefix 8 exit 1: parity check failed).")


def test_reuse_reads_the_record_of_the_run_that_adopted(tmp_path):
    from benchmarks.peers.float_prefix import choice_path, choose

    target, _ = _prefix_run(tmp_path)
    target.with_name(target.name + ".json").write_text(json.dumps({"quantization": {"float_prefix": {"count": 8}}}))
    got = choose(tmp_path, "m", "pte", ["stem"], threads=[1, 2])
    assert got["n"] == 0 and "the record of the run that adopted them" in got["error"] and "says None" in got["error"]
    choice_path(tmp_path, "m", "pte").parent.mkdir(parents=True)
    choice_path(tmp_path, "m", "pte").write_text(json.dumps({"n": 8, "last_unit": "blocks.6", "tried": []}))
    assert choose(tmp_path, "m", "pte", ["stem"], threads=[1, 2]) == {
        "n": 8, "last_unit": "blocks.6", "tried": [], "reused": True}


def test_mac_shares_per_prefix_from_the_accounting_rows():
    from benchmarks.peers.float_prefix import mac_shares

    rows = [("stem.conv", 10), ("stem.bn", 0), ("blocks.0.dw.conv", 20), ("blocks.0.se.fc1", 5),
            ("blocks.1.project.conv", 40), ("pool", 0), ("head", 25)]
    # total 100; "blocks.1" must not take "blocks.10"'s layers (prefix match on a whole path component)
    assert mac_shares(rows + [("blocks.10.conv", 0)], ["stem", "blocks.0", "blocks.1", "blocks.10", "head"]) == \
        pytest.approx([0.0, 0.10, 0.35, 0.75, 0.75], abs=EXACT)
    assert mac_shares([], ["stem"]) == [0.0]


def test_predict_never_builds_a_prefix_over_the_mac_cap():
    from benchmarks.peers.float_prefix import predict
    from device_bench.op_profile import prefix_gain

    # fp32 faster on every unit but the last: the longest prefix predicts best (an fp32 network, int8 tail)
    int8 = {"stem": 2.0, "b0": 2.0, "b1": 2.0, "b2": 2.0, "head": 1.0}
    fp32 = {"stem": 1.5, "b0": 1.6, "b1": 1.7, "b2": 1.8, "head": 2.0}
    tables = [prefix_gain(int8, fp32)]
    shares = [0.0, 0.1, 0.3, 0.6, 0.95]  # the MAC share of the first N units
    got = predict(tables, shares=shares)
    # predicted 9.0, 8.5, 8.1, 7.8, 7.6 ms for N = 0..4: N=4 and N=3 are over 50% of the MACs; N=1 is
    # within 3 units of N=2, and tried after it as the stem (always tried when predicted faster)
    assert [(c["n"], c["fp32_mac_share"]) for c in got["candidates"]] == [(2, 0.3), (1, 0.1)]
    assert [c.get("always_tried", False) for c in got["candidates"]] == [False, True]
    assert got["over_share"] == {"n": 4, "last_unit": "b2", "relative": pytest.approx(7.6 / 9.0),
                                 "fp32_mac_share": 0.95}
    assert [c["n"] for c in predict(tables, shares=shares, max_share=1.0)["candidates"]] == [4, 1]
    assert "over_share" not in predict(tables, shares=None)


def test_predict_tries_the_stem_below_min_gain_but_not_when_predicted_slower():
    from benchmarks.peers.float_prefix import predict
    from device_bench.op_profile import prefix_gain

    int8 = {"stem": 1.0, "b0": 2.0, "b1": 2.0, "b2": 2.0, "head": 1.0}
    # the stem saves 0.1 of 8 ms (1.25%, under the 3% min_gain); b1 alone saves 0.5 ms
    fp32 = {"stem": 0.9, "b0": 2.0, "b1": 1.5, "b2": 2.5, "head": 1.0}
    got = predict([prefix_gain(int8, fp32)], shares=None)
    assert [c["n"] for c in got["candidates"]] == [3, 1], "N=3 (through b1) predicted best, then the stem"
    assert got["candidates"][1]["relative"] == pytest.approx(7.9 / 8.0)
    slower = {**fp32, "stem": 1.2}
    assert [c["n"] for c in predict([prefix_gain(int8, slower)], shares=None)["candidates"]] == [3], \
        "a stem predicted slower in fp32 is not built"
    capped = predict([prefix_gain(int8, fp32)], shares=[0.0, 0.6, 0.6, 0.7, 0.8])
    assert capped["candidates"] == [], "the stem too stays within the MAC cap"
