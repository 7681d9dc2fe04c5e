"""``edge-se bench`` end to end on this machine: both formats, append-only atomic output, failures kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from device_artifacts import artifacts  # noqa: F401  (session fixture)

from edge_se.cli import main

FAST = ["--runs", "5", "--warmup", "1", "--min-seconds", "0", "--repeats", "2", "--cooldown", "0"]
CONTRACT = {"artifact", "manifest_sha256", "device", "transport", "emulated", "output_checksum", "latency_ms",
            "threads", "runtime", "cpu_model", "machine", "kernel", "peak_rss_bytes", "load_ms",
            "first_inference_ms", "total_seconds", "repeat_spread_pct", "unstable", "status"}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.export
def test_bench_local_both_formats_appends(artifacts, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bench.jsonl"
    out.write_text('{"earlier": true}\n')
    arts = [str(artifacts["tiny_se_litert_fp32.tflite"]), str(artifacts["tiny_se_xnnpack_int8.pte"])]
    assert main(["bench", *arts, "--device", "local", "--threads", "1", *FAST, "--out", str(out)]) == 0
    recs = lines(out)
    assert recs[0] == {"earlier": True}, "earlier lines must survive"
    assert len(recs) == 3
    for rec, art in zip(recs[1:], arts, strict=True):
        assert CONTRACT <= set(rec), CONTRACT - set(rec)
        assert rec["artifact"] == art and rec["status"] == "ok" and rec["emulated"] is False
        assert rec["transport"] == "local" and rec["threads"] == 1
        assert set(rec["latency_ms"]) == {"min", "p50", "p90", "p99", "mean", "std", "count"}
        assert rec["latency_ms"]["count"] >= 10
    stdout = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert stdout == recs[1:]


@pytest.mark.export
def test_failing_device_keeps_earlier_lines_and_records_the_error(artifacts, tmp_path):  # noqa: F811
    out = tmp_path / "bench.jsonl"
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.gone]\ntransport = "ssh://nobody@127.0.0.1:1"\nconnect_timeout_s = 3\n')
    art = str(artifacts["tiny_se_litert_int8.tflite"])
    rc = main(["bench", art, "--device", "local", "--device", "gone", "--inventory", str(inv), *FAST,
               "--out", str(out)])
    assert rc == 1
    ok, failed = lines(out)
    assert ok["status"] == "ok" and ok["device"] == "local"
    assert failed["status"] == "error" and failed["device"] == "gone" and "gone: connection refused" in failed["error"]


@pytest.mark.export
def test_bad_input_is_one_line_error(artifacts, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "b.jsonl"
    assert main(["bench", str(tmp_path / "missing.pte"), "--out", str(out)]) == 2
    assert "missing.pte: artifact not found" in capsys.readouterr().err
    art = str(artifacts["tiny_se_litert_int8.tflite"])
    assert main(["bench", art, "--device", "nowhere", "--out", str(out)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(err) == 1 and "'nowhere' is neither a transport URL nor in the inventory" in err[0]
    assert not out.exists(), "nothing may be written when the input is bad"
