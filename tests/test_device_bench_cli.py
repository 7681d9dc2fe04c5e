"""``edge-se bench`` end to end on this machine: both formats, append-only atomic output, failures kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from device_artifacts import artifacts  # noqa: F401  (session fixture)

from contract.bench import validate
from contract.measure import MeasureSpec
from edge_se.cli import main

FAST = ["--runs", "5", "--warmup", "1", "--min-seconds", "0", "--repeats", "2", "--cooldown", "0"]
LATENCY = {"min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "samples"}
CONTRACT = LATENCY | {"schema", "measure", "artifact", "manifest_sha256", "device", "transport", "emulated",
                     "output_checksum", "threads", "runtime", "cpu_model", "machine", "kernel", "peak_rss_bytes",
                     "load_ms", "first_inference_ms", "total_seconds", "repeat_spread_pct", "unstable", "status"}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.export
def test_bench_local_both_formats_appends(artifacts, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bench.jsonl"
    out.write_text('{"earlier": true}\n')
    arts = [str(artifacts["tiny_se_litert_fp32.tflite"]), str(artifacts["tiny_se_xnnpack_int8.pte"])]
    assert main(["bench", *arts, "--device", "local", "--threads", "1", *FAST, "--order", "given",
                 "--out", str(out)]) == 0
    recs = lines(out)
    assert recs[0] == {"earlier": True}, "earlier lines must survive"
    assert len(recs) == 3
    for i, (rec, art) in enumerate(zip(recs[1:], arts, strict=True)):
        assert CONTRACT <= set(rec), CONTRACT - set(rec)
        assert rec["artifact"] == art and rec["status"] == "ok" and rec["emulated"] is False
        assert rec["transport"] == "local" and rec["threads"] == 1
        validate(rec, "bench line", fresh=True)  # both runners of this checkout: the stability keys too
        assert "latency_ms" not in rec and rec["samples"] >= 10
        assert MeasureSpec.from_dict(rec["measure"]) == MeasureSpec.from_argv([*FAST, "--threads", "1"])
        assert (rec["order_mode"], rec["order"], rec["order_index"]) == ("given", arts, i)
    captured = capsys.readouterr()
    stdout = [json.loads(x) for x in captured.out.splitlines()]
    assert stdout == recs[1:]
    summary = [x for x in captured.err.splitlines() if x.startswith("bench: 2 artifact(s)")]
    assert summary == ["bench: 2 artifact(s) x ['local']: warmup 1, runs >= 5 and >= 0.0 s, 2 repeat(s), 0.0 s apart, "
                       "1 thread(s); runner auto, time-out 600 s, order given"]


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
    for rec in (ok, failed):
        validate(rec, "bench line")  # an error record carries no latency keys, and is valid
    assert "p50_ms" not in failed and failed["measure"] == ok["measure"]


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


def test_bad_order_is_one_line_error_and_the_default_is_shuffled(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tmp_path / "m.pte"), "--order", "random", "--out", str(out)])
    assert exc.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(err) == 1 and "--order: invalid choice: 'random' (choose from 'given', 'shuffled')" in err[0]
    assert not out.exists()
    from edge_se.cli import build_parser

    assert build_parser().parse_args(["bench", "m.pte", "--out", str(out)]).order == "shuffled"


def test_bad_measurement_flag_is_one_line_error_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    assert main(["bench", str(tmp_path / "m.pte"), "--runs", "0", "--out", str(out)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(err) == 1 and "--runs must be an integer >= 1, got 0" in err[0]
    assert main(["bench-torch", "m", "--affinity", "a,b", "--out", str(out)]) == 2
    assert "--affinity 'a,b'" in capsys.readouterr().err
    assert not out.exists()
