"""Desktop PyTorch baselines: the CPU path runs here; the CUDA path's logic is tested with stand-ins."""

from __future__ import annotations

import json

import pytest
import torch

from contract.bench import validate
from contract.measure import MeasureSpec
from device_bench import torch_baseline as tb
from edge_se.cli import main

FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--repeats", "2", "--cooldown", "0"]


def test_bench_torch_cpu_eager_registry_model(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    args = ["bench-torch", "mobilenetv3_small_100", "--torch-device", "cpu", "--resolution", "64", "--no-compile",
            *FAST]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--batch", "2", "--out", str(out)]) == 0
    a, b = (json.loads(x) for x in out.read_text().splitlines())
    assert a["status"] == "ok" and a["device"] == "cpu" and a["runtime"]["name"] == "torch-eager"
    assert a["resolution"] == 64 and a["batch"] == 1 and b["batch"] == 2 and a["gpu_name"] is None
    for rec in (a, b):
        validate(rec, "bench-torch line")
    assert "latency_ms" not in a and a["samples"] >= 6 and len(a["repeats"]) == 2
    assert MeasureSpec.from_dict(a["measure"]) == MeasureSpec.from_argv(FAST)
    assert a["output_checksum"] != b["output_checksum"]
    assert a["throughput_per_s"] == pytest.approx(1e3 / a["p50_ms"])
    assert "bench-torch: mobilenetv3_small_100 on cpu: warmup 1, runs >= 3" in capsys.readouterr().err


def test_time_model_honours_max_runs_and_min_seconds():
    calls = []

    def timer(fn):
        fn()
        return 10.0  # ms

    cfg = tb.TorchBenchConfig(model="m", measure=MeasureSpec(warmup=2, runs=1, min_seconds=1.0, max_runs=4,
                                                             repeats=2, cooldown_s=0.0))
    res = tb.time_model(lambda: calls.append(1), timer, cfg)
    assert [r["samples"] for r in res["repeats"]] == [4, 4], "max_runs caps each repeat before min_seconds"
    assert len(calls) == 2 + 8 and res["samples"] == 8
    uncapped = tb.time_model(lambda: None, timer, tb.TorchBenchConfig(
        model="m", measure=MeasureSpec(warmup=0, runs=1, min_seconds=0.05, repeats=1, cooldown_s=0.0)))
    assert uncapped["samples"] == 5, "runs until min_seconds (5 x 10 ms)"


def test_deprecated_device_spelling_still_works(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake(cfg, out, **_):
        seen["cfg"] = cfg
        return []

    monkeypatch.setattr(tb, "bench_torch", fake)
    assert main(["bench-torch", "m", "--device", "cuda", *FAST, "--out", str(tmp_path / "t.jsonl")]) == 0
    assert seen["cfg"].device == "cuda"
    err = [x for x in capsys.readouterr().err.splitlines() if "deprecated" in x]
    assert err == ["edge-se bench-torch: warning: --device is deprecated; use --torch-device"]
    assert main(["bench-torch", "m", "--torch-device", "cpu", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert seen["cfg"].device == "cpu" and seen["cfg"].measure == MeasureSpec()
    assert "deprecated" not in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA message; this machine has CUDA")
def test_cuda_request_without_cuda_says_so_and_records_cpu(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert main(["bench-torch", "mobilenetv3_small_100", "--torch-device", "cuda", "--resolution", "32", "--no-compile",
                 *FAST, "--out", str(out)]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if "CUDA" in x]
    assert err == ["bench-torch: CUDA is not available on this machine: recording the CPU baseline only"]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["device"], r["dtype"], r["batch"]) for r in recs] == [("cpu", "fp32", 1)]
    assert recs[0]["cuda_requested_but_absent"] is True


def test_resolve_defaults():
    cfg = tb.TorchBenchConfig(model="m", device="cuda")
    assert tb.resolve(cfg, True) == ("cuda", ("fp32", "fp16", "bf16"), (1, tb.GPU_LARGE_BATCH), None)
    assert tb.resolve(tb.TorchBenchConfig(model="m", dtypes=("bf16",)), False)[:3] == ("cpu", ("bf16",), (1,))
    with pytest.raises(ValueError, match="--dtype 'int4'"):
        tb.resolve(tb.TorchBenchConfig(model="m", dtypes=("int4",)), True)


def test_cuda_timer_reads_events_after_the_end_event():
    calls = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing
            self.done = False

        def record(self):
            calls.append("record")

        def synchronize(self):
            calls.append("sync")
            self.done = True

        def elapsed_time(self, end):
            assert end.done, "elapsed_time read before the end event completed"
            return 2.5

    class FakeTorch:
        cuda = type("cuda", (), {"Event": Event})

    timer = tb._timer(FakeTorch, "cuda")
    assert timer(lambda: calls.append("call")) == 2.5
    assert calls == ["record", "call", "record", "sync"]


@pytest.mark.slow
def test_compile_mode_runs_or_records_why(tmp_path):
    def tiny(_name):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(), 16

    cfg = tb.TorchBenchConfig(model="tiny", measure=MeasureSpec(runs=3, warmup=1, min_seconds=0.0, repeats=1))
    recs = tb.bench_torch(cfg, tmp_path / "c.jsonl", build=tiny)
    assert [r["runtime"]["name"] for r in recs] == ["torch-eager", "torch-compile"]
    eager, compiled = recs
    assert eager["status"] == "ok"
    assert compiled["status"] == "ok" or compiled["error"], "a failing torch.compile must say why"
    if compiled["status"] == "ok":
        assert compiled["output_checksum"] is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA skip; this machine has CUDA")
def test_cuda_request_without_cuda_can_record_one_skip(tmp_path, capsys, monkeypatch):
    # --without-cuda skip (a sweep's cuda cell): one valid `skipped` record, no model built, nothing timed
    def no_build(name):
        raise AssertionError("the model was built although nothing is timed")

    monkeypatch.setattr(tb, "build_registry_model", no_build)
    monkeypatch.setattr(tb.bench_torch, "__kwdefaults__", {"build": no_build})
    out = tmp_path / "t.jsonl"
    assert main(["bench-torch", "mobilenetv3_small_100", "--torch-device", "cuda", "--without-cuda", "skip",
                 *FAST, "--out", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["status"], r["device"], r["reason"]) for r in recs] == [
        ("skipped", "cuda", "CUDA is not available on this machine")]
    assert "skipped: CUDA is not available" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--without-cuda 'maybe'"):
        tb.resolve(tb.TorchBenchConfig(model="m", device="cuda", without_cuda="maybe"), False)


@pytest.mark.slow
def test_warm_only_fills_the_inductor_cache_that_the_timing_run_loads(tmp_path, monkeypatch):
    # What a sweep's compile cell does for its baseline cell: compile once into a cache directory,
    # then time with a copy of it. The timed compile mode must load every FX graph (hits) and compile
    # none (misses 0), and say so in its record; the cold warm-up compiled at least one.
    import shutil

    def tiny(_name):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Hardswish()).eval(), 16

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "warm"))
    cfg = tb.TorchBenchConfig(model="tiny", measure=MeasureSpec(runs=3, warmup=1, min_seconds=0.0, repeats=1))
    torch._dynamo.reset()
    (warm,) = tb.warm_compile(cfg, build=tiny)
    if warm["status"] != "ok":
        pytest.skip(f"torch.compile does not work here: {warm['error']}")
    assert warm["compile_cache"]["misses"] >= 1 and warm["first_call_ms"] > 0
    shutil.copytree(tmp_path / "warm", tmp_path / "copy")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "copy"))
    torch._dynamo.reset()
    recs = tb.bench_torch(cfg, tmp_path / "c.jsonl", build=tiny)
    compiled = next(r for r in recs if r["runtime"]["name"] == "torch-compile")
    assert compiled["status"] == "ok", compiled.get("error")
    assert compiled["compile_cache"] == {"hits": warm["compile_cache"]["misses"], "misses": 0}
    validate(compiled, "compiled record", fresh=True)
    assert "compile_cache" not in next(r for r in recs if r["runtime"]["name"] == "torch-eager")


def test_out_is_required_unless_warm_only(capsys):
    assert main(["bench-torch", "mobilenetv3_small_100", "--resolution", "32"]) == 2
    assert "--out is required (unless --warm-only)" in capsys.readouterr().err
