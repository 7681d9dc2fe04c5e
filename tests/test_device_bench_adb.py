"""The adb transport against a stand-in ``adb`` that this test puts first on PATH.

No Android device or SDK is involved. The stand-in (written below) implements ``-s SERIAL``
``push``, ``shell`` and ``get-state`` by mapping the "device" onto this machine: pushes are
copies and shell commands run under ``sh -c``; an unknown serial fails like adb does. The
"Android tools" are stand-ins too: a ``benchmark_model`` script that really runs the .tflite
with ai_edge_litert and prints TFLite benchmark_model's output format, and the host build of
edge-se's native runner in place of an Android build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from device_artifacts import artifacts  # noqa: F401  (session fixture)

from contract.bench import validate
from contract.measure import MeasureSpec
from device_bench.bench import bench
from device_bench.inventory import Device
from device_bench.native_build import build, host_et_root
from device_bench.transports.adb import AdbTransport, parse_benchmark_model, parse_executor_runner
from device_bench.transports.base import DeviceError, RunOptions

SERIAL = "emulator-5554"
FAST = RunOptions(MeasureSpec(warmup=1, runs=5, min_seconds=0.0, repeats=2, cooldown_s=0.0), timeout_s=120)

FAKE_ADB = '''#!PYTHON
"""Stand-in for Android's adb (tests only): the device is this machine."""
import os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(repr(args) + "\\n")
serial = None
if args[:1] == ["-s"]:
    serial, args = args[1], args[2:]
if serial != os.environ["FAKE_ADB_SERIAL"]:
    print(f"adb: device '{serial}' not found", file=sys.stderr)
    sys.exit(1)
if args[0] == "get-state":
    print("device")
elif args[0] == "push":
    shutil.copy(args[1], args[2])
    print(f"{args[1]}: 1 file pushed")
elif args[0] == "shell":
    sys.exit(subprocess.run(["sh", "-c", " ".join(args[1:])]).returncode)
else:
    print(f"adb: unknown command {args[0]}", file=sys.stderr)
    sys.exit(1)
'''

FAKE_BENCHMARK_MODEL = '''#!PYTHON
"""Stand-in for TFLite's benchmark_model: really runs the graph, prints benchmark_model's format."""
import statistics, sys, time
from ai_edge_litert.interpreter import Interpreter
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
t0 = time.perf_counter()
it = Interpreter(model_path=flags["graph"], num_threads=int(flags["num_threads"]))
it.allocate_tensors()
init = (time.perf_counter() - t0) * 1e6
def once():
    t = time.perf_counter(); it.invoke(); return (time.perf_counter() - t) * 1e6
first = once()
warm = [once() for _ in range(int(flags["warmup_runs"]))]
runs = []
start = time.perf_counter()
while len(runs) < int(flags["num_runs"]) or time.perf_counter() - start < float(flags["min_secs"]):
    runs.append(once())
mean, sd, med = statistics.mean(runs), statistics.pstdev(runs), statistics.median(runs)
print("STARTING!")
print(f"Graph: [{flags['graph']}]")
print(f"#threads used for CPU inference: [{flags['num_threads']}]")
print(f"Running benchmark for at least {len(warm)} iterations and at least 0.5 seconds")
print(f"count={len(warm) or 1} first={first:.0f} curr={first:.0f} min={first:.0f} max={first:.0f} "
      f"avg={first:.0f} std=0")
print(f"Running benchmark for at least {flags['num_runs']} iterations and at least {flags['min_secs']} seconds")
print(f"count={len(runs)} first={runs[0]:.0f} curr={runs[-1]:.0f} min={min(runs):.0f} max={max(runs):.0f} "
      f"avg={mean:.2f} std={sd:.0f} p5={min(runs):.0f} median={med:.0f} p95={max(runs):.0f}")
print(f"Inference timings in us: Init: {init:.0f}, First inference: {first:.0f}, "
      f"Warmup (avg): {first:.0f}, Inference (avg): {mean:.2f}")
print("Memory footprint delta from the start of the tool (MB): init=3.5 overall=7.25")
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("adb", FAKE_ADB), ("benchmark_model", FAKE_BENCHMARK_MODEL)):
        (bin_dir / name).write_text(text.replace("PYTHON", sys.executable, 1))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_SERIAL", SERIAL)
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    device_dir = tmp_path / "device"  # the "device's" /data/local/tmp
    device_dir.mkdir()
    return {"bin": bin_dir, "remote_dir": str(device_dir), "log": tmp_path / "adb.log"}


@pytest.mark.export
def test_adb_benchmark_model_and_native_runner(fake_adb, artifacts, tmp_path):  # noqa: F811
    native = build("host")
    inv = {"phone": Device("phone", f"adb://{SERIAL}", threads=1, options={
        "remote_dir": fake_adb["remote_dir"], "tflite_benchmark": str(fake_adb["bin"] / "benchmark_model"),
        "native_runner": str(native), "native_lib_dir": str(host_et_root() / "lib")})}
    out = tmp_path / "adb.jsonl"
    recs = bench([artifacts["tiny_se_litert_int8.tflite"], artifacts["tiny_se_xnnpack_int8.pte"]], ["phone"], inv,
                 FAST, out)
    assert [r["status"] for r in recs] == ["ok", "ok"], [r.get("error") for r in recs]
    tfl, pte = recs
    assert tfl["transport"] == "adb" and tfl["runtime"]["name"] == "tflite-benchmark_model"
    assert tfl["samples"] >= 10 and tfl["min_ms"] > 0 and tfl["p50_ms"] > 0
    for rec in recs:
        validate(rec, "adb record")
    assert tfl["measure"] == FAST.measure.to_dict() and tfl["percentiles_pooled"] is False
    assert len(tfl["repeats"]) == 2 and tfl["output_checksum"] is None
    assert "does not expose" in tfl["output_checksum_note"]
    assert tfl["peak_rss_bytes"] == int(7.25 * 2**20)
    assert pte["runtime"]["name"] == "executorch-native" and pte["output_checksum"].startswith("sha256:")
    assert list(Path(fake_adb["remote_dir"]).iterdir()) == [], "the device directory was not cleaned up"
    log = fake_adb["log"].read_text()
    assert "'push'" in log and "sha256sum" in log


def test_adb_unknown_serial_and_missing_tool(fake_adb, artifacts):  # noqa: F811
    art = artifacts["tiny_se_litert_int8.tflite"]
    t = AdbTransport.from_url("adb://nosuch", options={"remote_dir": fake_adb["remote_dir"],
                                                      "tflite_benchmark": str(fake_adb["bin"] / "benchmark_model")})
    with pytest.raises(DeviceError, match=r"^adb://nosuch: device not found"):
        t.run(art, Path(f"{art}.json"), FAST)
    assert t.probe()["reachable"] is False
    bare = AdbTransport.from_url(f"adb://{SERIAL}", options={"remote_dir": fake_adb["remote_dir"]})
    with pytest.raises(DeviceError, match="set tflite_benchmark"):
        bare.run(art, Path(f"{art}.json"), FAST)
    assert bare.probe()["reachable"] is True


def test_parsers_read_real_tool_output():
    # benchmark_model output (TFLite 2.x) as printed on a Pixel; values in microseconds.
    text = """INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds
INFO: count=89 first=8101 curr=5500 min=5432 max=8101 avg=5611.2 std=301
INFO: Running benchmark for at least 50 iterations and at least 1 seconds
INFO: count=178 first=5530 curr=5498 min=5401 max=6012 avg=5520.75 std=88
INFO: Inference timings in us: Init: 21015, First inference: 8101, Warmup (avg): 5611.2, Inference (avg): 5520.75
INFO: Memory footprint delta from the start of the tool (MB): init=4.1 overall=10.3"""
    p = parse_benchmark_model(text)
    assert p["repeat"]["samples"] == 178 and p["repeat"]["mean_ms"] == pytest.approx(5.52075)
    assert p["repeat"]["min_ms"] == pytest.approx(5.401) and p["repeat"]["p50_ms"] is None
    assert p["load_ms"] == pytest.approx(21.015) and p["first_inference_ms"] == pytest.approx(8.101)
    e = parse_executor_runner("I executor_runner.cpp:150] Model executed successfully 20 time(s) in 41.500000 ms.")
    assert e["repeat"]["samples"] == 20 and e["repeat"]["mean_ms"] == pytest.approx(2.075)
    with pytest.raises(ValueError):
        parse_benchmark_model("Segmentation fault")
