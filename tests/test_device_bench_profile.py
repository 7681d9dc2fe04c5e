"""``edge-se bench --profile``: per-operator profiles from ExecuTorch's ETDump, SE blocks found by structure."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tolerances import PROFILE_SUM_REL

from contract.files import exclusive
from device_bench import op_profile
from edge_se.cli import main
from edge_se.errors import EdgeSeError

REPO = Path(__file__).resolve().parent.parent
MODEL, RESOLUTION = "mobilenetv3_small_100", 320
ARTIFACT = f"{MODEL}_xnnpack_fp32.pte"
FAST = ["--runs", "10", "--warmup", "3", "--min-seconds", "0", "--repeats", "1", "--cooldown", "0", "--threads", "1"]


def _exported(request, tmp_path_factory, fmt: str, name: str, key: str, dists: tuple[str, ...]) -> Path:
    """MobileNetV3-Small (random weights, fp32) as ``name``, exported once per ``key`` and tool versions."""
    h = hashlib.sha256(key.encode())
    for dist in dists:
        h.update(importlib.metadata.version(dist).encode())
    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("profile_artifacts")) if cache else tmp_path_factory.mktemp("profile")
    folder = base / h.hexdigest()[:16]
    path = folder / name
    with exclusive(folder / "build"):  # pytest-xdist workers share the cache: one exports, the others wait
        if not (path.exists() and path.with_name(name + ".json").exists()):
            assert main(["export", MODEL, "--resolution", str(RESOLUTION), "--format", fmt, "--dtype", "fp32",
                         "--calib", "random", "--no-check", "--out", str(folder)]) == 0
    return path


@pytest.fixture(scope="module")
def mobilenet(request, tmp_path_factory) -> Path:
    """MobileNetV3-Small (random weights, fp32, 320 px) as a ``.pte``.

    320 px because XNNPACK cuts each operator's time to whole microseconds: the profile is
    meaningful only where operators take many of them (tests/tolerances.py, PROFILE_SUM_REL).
    """
    return _exported(request, tmp_path_factory, "pte", ARTIFACT, f"{MODEL} {RESOLUTION} fp32 random",
                     ("torch", "executorch", "torchao"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.export
@pytest.mark.parametrize("runner", ["python", "native"])
def test_profile_sums_to_end_to_end_with_se_rows(mobilenet, runner, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", str(mobilenet), "--device", "local", *FAST, "--runner", runner, "--profile",
                 "--out", str(out)]) == 0
    (rec,) = _lines(out)
    assert rec["status"] == "ok" and rec["profile_file"] == str(tmp_path / "bench.profile.jsonl")
    assert rec["runner"] == runner and rec["op_profile"]["runs"] == 20
    (prof,) = _lines(tmp_path / "bench.profile.jsonl")
    assert prof["status"] == "ok" and prof["schema"] == op_profile.SCHEMA, prof
    ratio = prof["sum_to_end_to_end"]
    # Both figures come from the same profiled inferences (ETDump's Method::execute and its operators).
    assert abs(ratio - 1) <= PROFILE_SUM_REL, (
        f"per-op sum {prof['per_op_sum_ms']:.4f} ms vs end to end {prof['end_to_end_ms']:.4f} ms: ratio {ratio:.3f}")
    assert prof["per_op_sum_ms"] == pytest.approx(sum(r["total_ms"] for r in prof["op_types"]))
    assert sum(r["share"] for r in prof["op_types"]) == pytest.approx(1.0)
    assert prof["truncation_bound_ms"] == pytest.approx(prof["delegated_operators"] * 0.001)
    types = {r["op_type"] for r in prof["op_types"]}
    assert any(t.startswith("Convolution") for t in types) and any(t.startswith("Mean") for t in types)

    se = prof["se"]
    manifest = json.loads(mobilenet.with_name(ARTIFACT + ".json").read_text())
    assert se["matched"], se
    assert [b["name"] for b in se["blocks"]] == op_profile.se_block_names(manifest)
    assert len(se["blocks"]) == 9 and se["blocks"][0]["name"] == "blocks.0.se"
    assert se["macs_share"] == pytest.approx(manifest["se_macs"] / manifest["macs"])
    parts = se["parts"]
    assert set(parts) == {"squeeze", "fcs", "gate", "scale"}
    assert parts["squeeze"]["op_types"][0].startswith("Mean")
    assert all(t.startswith("Fully Connected") for t in parts["fcs"]["op_types"])
    assert {"Add (ND)", "Clamp (NC)", "Divide (ND)"} <= set(parts["gate"]["op_types"])  # fp32 hard-sigmoid
    assert parts["scale"]["op_types"] == ["Multiply (ND)"] and parts["scale"]["operators"] == 9
    assert se["latency_ms"] == pytest.approx(sum(p["ms"] for p in parts.values()))
    said = op_profile.sentence(prof)
    assert said.startswith("SE is 0.41% of MACs and ") and "at most" in said
    top = (se["latency_ms"] + se["truncation_bound_ms"]) / prof["end_to_end_ms"]
    assert f"at most {100 * top:.1f}%" in said
    assert "profile: per-op sum" in capsys.readouterr().err
    print(f"{runner}: per-op sum / end to end = {ratio:.3f}; {op_profile.sentence(prof)}")


def test_find_se_blocks_by_structure():
    fp32 = ["DWConv", "HardSwish (NC)", "Mean (ND) Reduce2", "Fully Connected (NC, F32) GEMM",
            "Fully Connected (NC, F32) GEMM", "Transpose (ND, X32)", "Add (ND)", "Clamp (NC)", "Divide (ND)",
            "Transpose (ND, X32)", "Multiply (ND)", "Fully Connected (NC, F32) GEMM"]
    (b,) = op_profile.find_se_blocks(fp32)
    assert b == {"squeeze": [2], "fcs": [3, 4], "gate": [5, 6, 7, 8, 9], "scale": [10]}
    int8 = ["Mean (ND)", "Fully Connected (NC, QS8, QC8W) GEMM", "Fully Connected (NC, QS8, QC8W) GEMM",
            "Multiply (ND)"]
    assert op_profile.find_se_blocks(int8) == [{"squeeze": [0], "fcs": [1, 2], "gate": [], "scale": [3]}]
    head = ["Mean (ND)", "Transpose (ND, X8)", "Static Reshape (NC)", "Fully Connected (NC, QS8, QC8W) GEMM",
            "HardSwish (NC)", "Fully Connected (NC, QS8, QC8W) GEMM", "Convert (NC)"]
    assert op_profile.find_se_blocks(head) == []  # the classifier's pooling is no SE block
    # EfficientNet's SE has a swish between its FCs, unfused: Sigmoid then Multiply in fp32, and the
    # name XNNPACK gives LiteRT's int8 swish. Before it was allowed there, EfficientNet-B0's 16 SE
    # blocks matched 0 times in all four artifacts (measured on phi 0 at 160 px, this session).
    swish = ["Mean (ND) Reduce2", "Fully Connected (NC, F32) GEMM", "Sigmoid (NC)", "Multiply (ND)",
             "Fully Connected (NC, F32) GEMM", "Sigmoid (NC)", "Multiply (ND)", "Fully Connected (NC, F32) GEMM"]
    assert op_profile.find_se_blocks(swish) == [{"squeeze": [0], "fcs": [1, 2, 3, 4], "gate": [5], "scale": [6]}]
    litert_int8 = ["Mean (ND) Reduce", "Fully Connected (NC, QS8, QC8W) GEMM", "Invalid Unary Op",
                   "Fully Connected (NC, QS8, QC8W) GEMM", "Sigmoid (NC)", "Multiply (ND)"]
    assert op_profile.find_se_blocks(litert_int8) == [{"squeeze": [0], "fcs": [1, 2, 3], "gate": [4], "scale": [5]}]


def test_se_counts_that_disagree_give_no_share():
    ops = tuple(op_profile.OpEvent(n, 0.01, True) for n in ("Mean (ND)", "Fully Connected #1", "Fully Connected #2",
                                                           "Multiply (ND) #1"))
    prof = op_profile.build_profile(op_profile.Trace(ops, (0.05, 0.05), 2), macs=100, se_macs=1,
                                    se_names=["blocks.0.se", "blocks.1.se"])
    assert prof["sum_to_end_to_end"] == pytest.approx(0.8)
    assert prof["se"]["matched"] is False and prof["se"]["latency_share"] is None
    assert "found 1 SE patterns" in prof["se"]["reason"] and op_profile.sentence(prof) is None


def test_profiles_are_taken_locally_in_both_formats():
    assert op_profile.unavailable_reason("tflite", "local") is None
    assert op_profile.unavailable_reason("pte", "local") is None
    assert "local device only" in op_profile.unavailable_reason("pte", "ssh")
    assert "local device only" in op_profile.unavailable_reason("tflite", "adb")


# Rows as LiteRT 2.3.0 prints them (ai_edge_litert's libLiteRt.so, LiteRtGetProfileSummary; its column
# padding shortened), out of index order as it lists them, plus a line that is no operator.
RUN_ORDER = """\
==================== Run Order ====================
  [node type]  [start]  [first]  [avg ms]  [%]  [cdf%]  [mem KB] [times called]  [Name]
 Delegate/Convolution (NHWC, F32) IGEMM  0.000  0.094  0.079  2.536%  3.256%  0.000  20  [Delegate]:1
 Delegate/Transpose (ND, X32) Transpose  0.000  0.029  0.022  0.720%  0.720%  0.000  20  [Delegate]:0
  Delegate/Mean (ND) Reduce2  0.000  0.006  0.006  0.196%  7.455%  0.000  20  [Delegate]:7
Number of nodes executed: 3

==================== Top by Computation Time ====================
 Delegate/Convolution (NHWC, F32) IGEMM  0.000  0.094  0.079  2.536%  3.256%  0.000  20  [Delegate]:1
"""


def test_litert_run_order_parses_in_execution_order():
    from device_bench.litert_profile import LiteRtProfileError, parse_run_order

    rows = parse_run_order(RUN_ORDER)
    assert [(r["index"], r["op_type"], r["avg_ms"], r["calls"]) for r in rows] == [
        (0, "Transpose (ND, X32) Transpose", 0.022, 20), (1, "Convolution (NHWC, F32) IGEMM", 0.079, 20),
        (7, "Mean (ND) Reduce2", 0.006, 20)]
    assert all(r["delegated"] and r["name"] == "[Delegate]" for r in rows)
    with pytest.raises(LiteRtProfileError, match="no 'Run Order'"):
        parse_run_order("Number of nodes executed: 0")


def test_op_sequence_and_extra_ops_find_what_only_the_other_ran():
    # Seen on EfficientNet-B0 int8 .tflite: TensorFlow's converter ran edge-se's NHWC sequence plus one
    # reshape before the classifier; edge-se's NCHW artifact ran an input transpose the converter's did not.
    trace = op_profile.Trace((op_profile.OpEvent("Convolution (NHWC, QC8) IGEMM #0", 2.1, True),
                              op_profile.OpEvent("Mean (ND) Reduce #1", 0.01, True)), (2.2,), 1)
    assert op_profile.op_sequence(trace) == ("Convolution (NHWC, QC8) IGEMM", "Mean (ND) Reduce")
    ours = ["Conv", "Mean", "FC"]
    assert op_profile.extra_ops(ours, ours) == []
    assert op_profile.extra_ops(ours, ["Conv", "Mean", "Reshape", "FC"]) == ["Reshape"]
    assert op_profile.extra_ops(["Transpose", *ours], ["Conv", "Mean", "Reshape", "FC"]) is None
    assert op_profile.extra_ops(["FC", "Mean"], ["Conv", "Mean", "FC"]) is None  # the order counts
    assert op_profile.extra_ops([], ["Conv"]) == ["Conv"]


def test_se_block_names_of_a_manifest_edge_se_did_not_write_is_none():
    # The device_bench test artifacts (and another tool's manifests) say only "se": true: the profile
    # then has no SE rows, and edge-se bench --profile must not fail on it (it did: 'bool' has no .get).
    for variant in ({"family": "test", "se": True}, None, "x", {"se": None}):
        assert op_profile.se_block_names({"model": "tiny_se", "variant": variant, "resolution": 16}) is None
    names = op_profile.se_block_names({"model": "mobilenetv3_small_050", "variant": {"se": True}, "resolution": 64})
    assert names and names[0].endswith(".se"), names  # a registry model: its default gate and placement


def test_bad_litert_trace_is_one_line(tmp_path):
    bad = tmp_path / "t.litert.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(EdgeSeError, match="not a LiteRT trace") as err:
        op_profile.read_litert_trace(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(EdgeSeError, match="LiteRT trace not found"):
        op_profile.read_litert_trace(tmp_path / "missing.json")
    bad.write_text(json.dumps({"schema": "edge-se/litert-trace/1", "summary": RUN_ORDER, "end_to_end_ms": []}))
    with pytest.raises(EdgeSeError, match="no profiled run"):
        op_profile.read_litert_trace(bad)


@pytest.fixture(scope="module")
def mobilenet_tflite(request, tmp_path_factory) -> Path:
    """The same MobileNetV3-Small as :func:`mobilenet`, as an fp32 ``.tflite``."""
    return _exported(request, tmp_path_factory, "tflite", f"{MODEL}_litert_fp32.tflite",
                     f"{MODEL} {RESOLUTION} fp32 random tflite", ("torch", "litert-torch", "ai-edge-litert"))


@pytest.mark.export
def test_tflite_profile_from_litert_sums_to_end_to_end_with_se_rows(mobilenet_tflite, tmp_path):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", str(mobilenet_tflite), "--device", "local", *FAST, "--profile", "--out", str(out)]) == 0
    (rec,) = _lines(out)
    assert rec["status"] == "ok" and rec["op_profile"]["source"] == "litert-profiler", rec.get("op_profile")
    (prof,) = _lines(tmp_path / "bench.profile.jsonl")
    assert prof["status"] == "ok", prof
    assert prof["source"].startswith("litert-profiler") and prof["threads"] == 1 and prof["runs"] == 20
    # Operators and end to end from the same profiled inferences; XNNPACK's whole-microsecond cut and
    # the call around the delegate are what the sum misses (tests/tolerances.py).
    ratio = prof["sum_to_end_to_end"]
    assert abs(ratio - 1) <= PROFILE_SUM_REL, (
        f"per-op sum {prof['per_op_sum_ms']:.4f} ms vs end to end {prof['end_to_end_ms']:.4f} ms: ratio {ratio:.3f}")
    assert prof["delegated_operators"] == prof["operators"] > 100
    se = prof["se"]
    manifest = json.loads(mobilenet_tflite.with_name(mobilenet_tflite.name + ".json").read_text())
    assert se["matched"], se
    assert [b["name"] for b in se["blocks"]] == op_profile.se_block_names(manifest)
    assert se["parts"]["scale"]["operators"] == 9 and se["parts"]["squeeze"]["op_types"][0].startswith("Mean")
    assert op_profile.sentence(prof).startswith("SE is 0.41% of MACs and ")
    print(f"tflite: per-op sum / end to end = {ratio:.3f}; {op_profile.sentence(prof)}")


def test_bad_etdump_is_one_line(tmp_path):
    bad = tmp_path / "x.etdp"
    bad.write_bytes(b"not an etdump")
    with pytest.raises(EdgeSeError) as err:
        op_profile.read_etdump(bad, warmup=0)
    assert "not a readable ETDump" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EdgeSeError, match="ETDump not found"):
        op_profile.read_etdump(tmp_path / "missing.etdp", warmup=0)


def test_runner_rejects_bad_profile_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "device_bench.runner", "m.pte", "--manifest", "m.pte.json",
                           "--etdump", str(tmp_path / "e.etdp"), "--profile-runs", "0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "device_bench.runner: error: --profile-runs must be >= 1, got 0"


def test_report_says_se_share_only_where_a_profile_exists():
    from pipeline.config import parse_config
    from pipeline.report import _profile_lines

    cfg = parse_config('[[models]]\nname = "mobilenetv3_small_050"\n[bench]\nprofile = true\n')
    assert cfg.profile is True and parse_config('[[models]]\nname = "mobilenetv3_small_050"\n').profile is False
    prof = {"status": "ok", "runs": 20, "sum_to_end_to_end": 0.95, "end_to_end_ms": 1.0,
            "se": {"matched": True, "macs_share": 0.0081, "latency_share": 0.053, "latency_ms": 0.053,
                   "truncation_bound_ms": 0.036}}
    row = {"model": "m", "format": "pte", "dtype": "int8", "device": "local"}
    (line,) = _profile_lines([row | {"profile": prof}, row | {"format": "tflite", "profile": None},
                              row | {"dtype": "fp32", "profile": {"status": "unavailable", "reason": "x"}}])
    assert line == ("- **m** (pte int8 on local): SE is 0.81% of MACs and 5.3% of measured latency (at most 8.9%: "
                    "XNNPACK cuts operator times to whole microseconds). Per-operator profile of 20 runs; its "
                    "operators sum to 0.95 of the end-to-end time.")


def test_sentence_says_why_se_costs_more_than_its_macs():
    # every SE MAC is in the FCs: where SE's latency share is over twice its MAC share, the sentence
    # names the share of SE time spent in the MAC-free squeeze, gate and scale (measured parts)
    parts = {"squeeze": {"ms": 0.02}, "fcs": {"ms": 0.01}, "gate": {"ms": 0.005}, "scale": {"ms": 0.015}}
    prof = {"status": "ok", "end_to_end_ms": 1.0,
            "se": {"matched": True, "macs_share": 0.01, "latency_share": 0.05, "latency_ms": 0.05, "parts": parts}}
    assert op_profile.sentence(prof) == (
        "SE is 1.00% of MACs and 5.0% of measured latency; over twice its MAC share because 80% of SE's time is "
        "its squeeze, gate and scale, memory-bound passes over the feature map that do no MACs")
    prof["se"]["latency_share"] = 0.015  # under twice: nothing to explain
    assert op_profile.sentence(prof) == "SE is 1.00% of MACs and 1.5% of measured latency"
