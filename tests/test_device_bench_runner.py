"""The on-device runner (Python and native) on both formats, run locally in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from device_artifacts import BLOCKER, artifacts, blocker  # noqa: F401  (artifacts: session fixture)

from contract.bench import SCHEMA, STABILITY_KEYS, validate
from contract.measure import MeasureSpec
from device_bench import manifest as mf
from device_bench import stats
from device_bench.native_build import build

REPO = Path(__file__).resolve().parent.parent
FAST = ["--warmup", "2", "--runs", "5", "--min-seconds", "0", "--repeats", "2", "--cooldown", "0"]
LATENCY_KEYS = {"min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "samples"}
RESULT_KEYS = LATENCY_KEYS | {"schema", "measure", "total_seconds", "load_ms", "first_inference_ms", "peak_rss_bytes",
                              "output_checksum", "threads", "runtime", "cpu_model", "machine", "kernel", "repeats",
                              "repeat_spread_pct", "unstable", "unstable_threshold_pct", "manifest_sha256",
                              *STABILITY_KEYS}



def run_python(artifact: Path, *extra: str, block: bool | str = False) -> subprocess.CompletedProcess:
    """The Python runner in a child process; ``block``: True for :data:`BLOCKER`, or a :func:`blocker` source."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = "import runpy; runpy.run_module('device_bench.runner', run_name='__main__')"
    code = (BLOCKER if block is True else block or "") + run
    cmd = [sys.executable, "-c", code, str(artifact), "--manifest", f"{artifact}.json", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def native() -> Path:
    return build("host")


def check_stability(res: dict) -> None:
    """The stability figures follow their definitions (device_bench/stats.py) from the record's own figures.

    Exact, not approximate: the printed doubles read back as the runner had them, and both runners
    compute ``100 * std / mean`` and ``p99 / p50`` in that order. The runners print no samples, so the
    figures that need them (the trimmed mean) are checked where they are defined without them (below 20
    samples nothing is trimmed: the mean); tests/test_device_bench_stats.py checks the native code on
    given samples, bit for bit.
    """
    for fig in [res, *res["repeats"]]:
        assert fig["cv_pct"] == 100.0 * fig["std_ms"] / fig["mean_ms"]
        assert fig["p99_p50"] == fig["p99_ms"] / fig["p50_ms"]
        if fig["samples"] < 20:
            assert fig["trimmed_mean_ms"] == fig["mean_ms"]
        else:
            assert fig["min_ms"] <= fig["trimmed_mean_ms"]
    assert (res["stability"], res["stability_reasons"]) == stats.verdict(
        spread_pct=res["repeat_spread_pct"], unstable_pct=res["unstable_threshold_pct"], cv_pct=res["cv_pct"],
        p99_p50=res["p99_p50"])
    assert (res["stability"] == "unstable") == res["unstable"]


def check_result(res: dict, *, runs: int, repeats: int) -> None:
    assert RESULT_KEYS <= set(res), RESULT_KEYS - set(res)
    validate(res, "runner output", fresh=True)  # contract/bench.schema.json, with what runners write now
    check_stability(res)
    assert res["schema"] == SCHEMA and "latency_ms" not in res
    assert res["samples"] >= runs * repeats
    assert 0 < res["min_ms"] <= res["p50_ms"] <= res["p90_ms"] <= res["p99_ms"]
    assert len(res["repeats"]) == repeats and all(r["samples"] >= runs for r in res["repeats"])
    assert all(LATENCY_KEYS <= set(r) for r in res["repeats"])
    assert MeasureSpec.from_dict(res["measure"]) == MeasureSpec.from_argv(FAST).replace(threads=1)
    assert res["output_checksum"].startswith("sha256:") and len(res["output_checksum"]) == 71
    assert res["output_nonzero_fraction"] > 0.5, "outputs are mostly zero: the model computed nothing"
    assert res["peak_rss_bytes"] > 1 << 20
    assert res["threads"] == 1
    assert res["outputs_repeatable"] is True


@pytest.mark.export
@pytest.mark.parametrize("name", ["tiny_se_litert_fp32.tflite", "tiny_se_litert_int8.tflite"])
def test_python_runner_tflite_without_torch(artifacts, name):  # noqa: F811
    proc = run_python(artifacts[name], *FAST, "--threads", "1", block=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    check_result(res, runs=5, repeats=2)
    assert res["runtime"]["name"] in ("ai_edge_litert", "tflite_runtime")
    assert res["manifest_sha256"] == json.loads(Path(f"{artifacts[name]}.json").read_text())["sha256"]


EXPORTER_BLOCKER = blocker("executorch.exir", why="timing a .pte must not import the exporter")


@pytest.mark.export
def test_python_pte_runner_never_imports_the_exporter_and_exir_still_imports_after(artifacts):  # noqa: F811
    # device_bench.runtimes.import_executorch_runtime: the runtime without executorch.exir (7.3 s of
    # import on the 2-core machine); same outputs as a plain run, and the real exporter loads afterwards.
    art = artifacts["tiny_se_xnnpack_int8.pte"]
    blocked = run_python(art, *FAST, block=EXPORTER_BLOCKER)
    assert blocked.returncode == 0, blocked.stderr[-2000:]
    plain = run_python(art, *FAST)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert json.loads(blocked.stdout)["output_checksum"] == json.loads(plain.stdout)["output_checksum"]
    after = ("import sys; from device_bench.runtimes import import_executorch_runtime; import_executorch_runtime(); "
             "assert 'executorch.exir' not in sys.modules and 'executorch.exir._warnings' not in sys.modules; "
             "from executorch.exir import to_edge; import executorch.exir._warnings as w; print(w.__name__)")
    proc = subprocess.run([sys.executable, "-c", after], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "executorch.exir._warnings", proc.stderr[-2000:]


@pytest.mark.export
@pytest.mark.parametrize("name", ["tiny_se_xnnpack_fp32.pte", "tiny_se_xnnpack_int8.pte"])
def test_python_and_native_runner_pte_agree(artifacts, native, name):  # noqa: F811
    py = run_python(artifacts[name], *FAST)
    assert py.returncode == 0, py.stderr[-2000:]
    nat = subprocess.run([str(native), str(artifacts[name]), "--manifest", f"{artifacts[name]}.json", *FAST],
                         capture_output=True, text=True, timeout=300)
    assert nat.returncode == 0, nat.stderr[-2000:]
    py_res, nat_res = json.loads(py.stdout), json.loads(nat.stdout)
    check_result(py_res, runs=5, repeats=2)
    check_result(nat_res, runs=5, repeats=2)
    assert py_res["runtime"]["name"] == "executorch"
    assert nat_res["runtime"]["name"] == "executorch-native"
    # Same seed -> bit-identical inputs in both runners -> identical output bytes on the same CPU.
    assert nat_res["output_checksum"] == py_res["output_checksum"]
    assert set(py_res) - {"affinity"} <= set(nat_res) | {"affinity"}
    assert nat_res["llc_bytes"] == py_res["llc_bytes"]  # one sysfs read, in C++ and in Python


@pytest.mark.export
def test_min_seconds_and_seed_are_honoured(artifacts, native):  # noqa: F811
    art = artifacts["tiny_se_xnnpack_int8.pte"]
    base = [str(native), str(art), "--manifest", f"{art}.json", "--warmup", "0", "--runs", "3", "--repeats", "1"]
    a = json.loads(subprocess.run([*base, "--min-seconds", "0.3"], capture_output=True, text=True, check=True).stdout)
    assert a["total_seconds"] >= 0.3 and a["samples"] > 3
    b = json.loads(subprocess.run([*base, "--min-seconds", "0", "--seed", "7"], capture_output=True, text=True,
                                  check=True).stdout)
    assert b["samples"] == 3 and b["measure"]["seed"] == 7
    assert b["output_checksum"] != a["output_checksum"], "a different seed must give different outputs"


@pytest.mark.export
def test_real_samples_from_file(artifacts, tmp_path):  # noqa: F811
    art = artifacts["tiny_se_litert_int8.tflite"]
    spec = mf.load_manifest(f"{art}.json").inputs[0]
    sample = np.full(spec.shape, 3, dtype=np.int8)
    np.save(tmp_path / "x.npy", sample)
    seeded = json.loads(run_python(art, *FAST).stdout)
    proc = run_python(art, *FAST, "--input-file", str(tmp_path / "x.npy"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["inputs_from"] == "files" and res["seed"] is None
    assert res["output_checksum"] != seeded["output_checksum"]
    (tmp_path / "bad.npy").write_bytes(b"")
    np.save(tmp_path / "bad.npy", sample.astype(np.float32))
    bad = run_python(art, *FAST, "--input-file", str(tmp_path / "bad.npy"))
    assert bad.returncode == 2 and "int8" in bad.stderr


@pytest.mark.export
def test_tampered_artifact_is_refused_by_both_runners(artifacts, native, tmp_path):  # noqa: F811
    src = artifacts["tiny_se_xnnpack_fp32.pte"]
    art = tmp_path / src.name
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    art.write_bytes(bytes(data))
    (tmp_path / f"{src.name}.json").write_text(Path(f"{src}.json").read_text())
    py = run_python(art, *FAST)
    assert py.returncode == 2 and "does not match manifest sha256" in py.stderr
    nat = subprocess.run([str(native), str(art), "--manifest", f"{art}.json", *FAST], capture_output=True, text=True)
    assert nat.returncode == 2 and "does not match manifest sha256" in nat.stderr


@pytest.mark.export
def test_manifest_errors_name_the_key(artifacts, native, tmp_path):  # noqa: F811
    src = artifacts["tiny_se_xnnpack_fp32.pte"]
    doc = json.loads(Path(f"{src}.json").read_text())
    del doc["sha256"]
    art = tmp_path / src.name
    art.write_bytes(src.read_bytes())
    Path(f"{art}.json").write_text(json.dumps(doc))
    py = run_python(art, *FAST)
    assert py.returncode == 2 and "sha256: missing required key" in py.stderr  # the contract's schema says so
    nat = subprocess.run([str(native), str(art), "--manifest", f"{art}.json"], capture_output=True, text=True)
    assert nat.returncode == 2 and "'sha256'" in nat.stderr


def test_input_generation_is_deterministic_and_in_range():
    f32 = mf.TensorSpec("x", (2, 3, 4), "float32")
    a, b = mf.make_input(f32, 0), mf.make_input(f32, 0)
    assert a.dtype == np.float32 and a.shape == (2, 3, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mf.make_input(f32, 1))
    assert a.min() >= -1.0 and a.max() < 1.0
    q = mf.TensorSpec("x", (1000,), "int8", scale=0.05, zero_point=-3)
    x = mf.make_input(q, 5)
    assert x.dtype == np.int8 and x.min() >= -128 and x.max() <= 127
    # Spread over the grid: the generated floats span the quantised range.
    assert x.min() < -100 and x.max() > 100
    # LiteRT's 16x8 models (int16 activations) take int16 inputs: the same rule on the int16 grid.
    q16 = mf.TensorSpec("x", (1000,), "int16", scale=1e-4, zero_point=0)
    x16 = mf.make_input(q16, 5)
    assert x16.dtype == np.int16 and x16.min() < -25_000 and x16.max() > 25_000
    # SplitMix64 reference values (seed 0), from the published algorithm.
    assert mf.splitmix64(0, 2).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_system_record_and_its_header_line():
    # Every results file records the machine this way and heads its table with this line.
    from device_bench.sysinfo import cpu_flags, describe, system_line, system_record

    record = system_record()
    assert record == describe() | {"cpu_flags": cpu_flags()}
    line = system_line({"cpu_model": "AMD EPYC", "machine": "x86_64", "cpu_count": 2, "cpu_flags": "avx2 fma"})
    assert line == "AMD EPYC (x86_64, 2 logical CPUs); flags: avx2 fma"
    assert system_line(None) == "not recorded"


@pytest.mark.export
def test_paired_timing_in_both_runners(artifacts, native, tmp_path):  # noqa: F811
    # --paired-with: B is timed in the same process, one block per repeat beside each of A's; the
    # record stays A's (its outputs), 'paired' holds B's figures with as many repeats, each of --runs.
    a, b = artifacts["tiny_se_xnnpack_int8.pte"], artifacts["tiny_se_xnnpack_fp32.pte"]
    pair = ["--paired-with", str(b), "--paired-manifest", f"{b}.json", *FAST]
    py = run_python(a, *pair)
    nat = subprocess.run([str(native), str(a), "--manifest", f"{a}.json", *pair],
                         capture_output=True, text=True, timeout=300)
    alone = run_python(a, *FAST)
    assert py.returncode == 0 and nat.returncode == 0, (py.stderr[-1000:], nat.stderr[-1000:])
    b_sha = json.loads(Path(f"{b}.json").read_text())["sha256"]
    for res in (json.loads(py.stdout), json.loads(nat.stdout)):
        validate(res, "paired record", fresh=True)
        check_result(res, runs=5, repeats=2)
        twin = res["paired"]
        assert (twin["artifact"], twin["manifest_sha256"], twin["order"]) == (b.name, b_sha, "alternating")
        assert twin["inputs"] == "shared"  # both take float32 [1, 3, H, W]: B runs on A's arrays
        assert [r["samples"] for r in twin["repeats"]] == [5, 5]
        assert res["output_checksum"] == json.loads(alone.stdout)["output_checksum"]  # A's outputs, not B's
        got = stats.paired_ratio(res)
        ratios = [r["p50_ms"] / t["p50_ms"] for r, t in zip(res["repeats"], twin["repeats"], strict=True)]
        assert got["ratios"] == ratios and min(ratios) <= got["ratio"] <= max(ratios) and got["repeats"] == 2
    assert set(json.loads(py.stdout)["paired"]) == set(json.loads(nat.stdout)["paired"])


@pytest.mark.export
def test_paired_timing_refuses_bad_pairs(artifacts, native, tmp_path):  # noqa: F811
    a = artifacts["tiny_se_xnnpack_fp32.pte"]
    # A twin with other inputs (here: another shape) cannot run on A's arrays: one line naming its manifest.
    doc = json.loads(Path(f"{a}.json").read_text())
    doc["inputs"][0]["shape"] = [1, *doc["inputs"][0]["shape"][1:-1], doc["inputs"][0]["shape"][-1] + 1]
    other = tmp_path / a.name
    other.write_bytes(a.read_bytes())
    Path(f"{other}.json").write_text(json.dumps(doc))
    for cmd in ([sys.executable, "-m", "device_bench.runner"], [str(native)]):
        base = [*cmd, str(a), "--manifest", f"{a}.json", *FAST]
        bad = subprocess.run([*base, "--paired-with", str(other), "--paired-manifest", f"{other}.json"],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        assert bad.returncode == 2 and f"{other}.json: input shapes " in bad.stderr, bad.stderr
        assert "(in any dimension order)" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        half = subprocess.run([*base, "--paired-with", str(other)], capture_output=True, text=True, cwd=REPO)
        assert half.returncode == 2 and "--paired-with and --paired-manifest go together" in half.stderr


def test_paired_twin_in_another_dimension_order_runs_on_its_own_inputs():
    # Keras' NHWC .tflite beside edge-se's NCHW one: the same size in another order, so each runs on
    # the seeded inputs its own manifest describes ("own"); another size, or --input-file, is refused.
    from types import SimpleNamespace

    from device_bench.manifest import ManifestError
    from device_bench.runner import _same_inputs

    def m(*shape, dtype="float32", scale=None):
        return SimpleNamespace(inputs=[SimpleNamespace(shape=list(shape), dtype=dtype, scale=scale, zero_point=None)])

    nchw = m(1, 3, 224, 224)
    assert _same_inputs(nchw, m(1, 3, 224, 224), "b.json", "a.json", files=False) is True
    assert _same_inputs(nchw, m(1, 224, 224, 3), "b.json", "a.json", files=False) is False
    assert _same_inputs(nchw, m(1, 3, 224, 224, dtype="int8", scale=0.01), "b.json", "a.json", files=False) is False
    with pytest.raises(ManifestError, match=r"b.json: input shapes \[\[1, 3, 224, 225\]\] are not a.json's"):
        _same_inputs(nchw, m(1, 3, 224, 225), "b.json", "a.json", files=False)
    with pytest.raises(ManifestError, match="with --input-file --paired-with needs an artifact taking the same"):
        _same_inputs(nchw, m(1, 224, 224, 3), "b.json", "a.json", files=True)


@pytest.mark.export
def test_paired_timing_of_an_int8_input_tflite_beside_its_fp32_twin(artifacts, tmp_path):  # noqa: F811
    # The full-integer .tflite takes int8 (its scale), the fp32 one float32, of one shape: B runs on the
    # seeded inputs of its own manifest (a float array handed to the int8 interpreter would be refused).
    a, b = artifacts["tiny_se_litert_int8.tflite"], artifacts["tiny_se_litert_fp32.tflite"]
    assert mf.load_manifest(f"{a}.json").inputs[0].dtype != mf.load_manifest(f"{b}.json").inputs[0].dtype
    pair = ["--paired-with", str(b), "--paired-manifest", f"{b}.json"]
    proc = run_python(a, *FAST, *pair)
    assert proc.returncode == 0, proc.stderr[-1000:]
    res = json.loads(proc.stdout)
    assert res["paired"]["inputs"] == "own" and len(res["paired"]["repeats"]) == 2
    assert res["output_checksum"] == json.loads(run_python(a, *FAST).stdout)["output_checksum"]  # A's own inputs
    # Input files are the first artifact's tensors: the twin would need the same ones.
    spec = mf.load_manifest(f"{a}.json").inputs[0]
    np.save(tmp_path / "x.npy", np.full(spec.shape, 3, dtype=np.int8))
    bad = run_python(a, *FAST, *pair, "--input-file", str(tmp_path / "x.npy"))
    assert bad.returncode == 2 and f"{b}.json: inputs differ" in bad.stderr and "--input-file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    # Hand-made figures with a known answer: ratios 1.0, 2.0, 3.0 -> median 2.0, quartiles 1.5 and 2.5
    # (linear interpolation, stats.percentile); exact, as every figure is a small binary fraction.
    rec = {"repeats": [{"p50_ms": 1.0}, {"p50_ms": 4.0}, {"p50_ms": 1.5}],
           "paired": {"repeats": [{"p50_ms": 1.0}, {"p50_ms": 2.0}, {"p50_ms": 0.5}]}}
    got = stats.paired_ratio(rec)
    assert (got["ratio"], got["ratio_q1"], got["ratio_q3"]) == (2.0, 1.5, 2.5)
    assert (got["p50_ms"], got["paired_p50_ms"], got["ratios"]) == (1.5, 1.0, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no 'paired'"):
        stats.paired_ratio({"repeats": [{"p50_ms": 1.0}]})
    with pytest.raises(ValueError, match="pair up"):
        stats.paired_ratio({"repeats": [{"p50_ms": 1.0}], "paired": {"repeats": []}})


@pytest.mark.export
def test_count_marks_needs_count_only_and_runs_untouched_without_the_plugin(artifacts):  # noqa: F811
    art = artifacts["tiny_se_litert_int8.tflite"]
    bad = run_python(art, *FAST, "--count-marks", "2")
    assert bad.returncode == 2 and "--count-marks takes --count-only" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # Outside the counting plugin a mark is a failing close(): the counted runs print their checksum.
    ok = run_python(art, "--runs", "3", "--warmup", "0", "--count-only", "--count-marks", "2")
    assert ok.returncode == 0, ok.stderr[-2000:]
    plain = run_python(art, "--runs", "3", "--warmup", "0", "--count-only")
    assert json.loads(ok.stdout)["output_checksum"] == json.loads(plain.stdout)["output_checksum"]
