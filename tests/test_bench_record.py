"""The bench record (contract.bench, edge-se/bench/2) and the one measurement spec every timing path uses."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from device_artifacts import BLOCKER, artifacts  # noqa: F401  (artifacts: session fixture)

from contract import bench as record
from contract import jsonschema_lite, schemas
from contract.errors import ContractError
from contract.measure import MeasureSpec, from_namespace
from device_bench import runner
from device_bench.bench import bench
from device_bench.transports.base import RunOptions, stage_runner

REPO = Path(__file__).resolve().parent.parent

SPEC = MeasureSpec(warmup=1, runs=4, min_seconds=0.0, repeats=2, cooldown_s=0.0, seed=3)


def _measured() -> dict:
    """A valid measured record, as the runner writes it (latency figures made up, shape real)."""
    rep = {"min_ms": 1.0, "p50_ms": 1.2, "p90_ms": 1.5, "p99_ms": 1.6, "mean_ms": 1.25, "std_ms": 0.1,
           "samples": 5, "seconds": 0.006}
    return {"schema": record.SCHEMA, "runner": "python", "artifact": "m.tflite", "threads": 1,
            "measure": SPEC.to_dict(), **{k: v for k, v in rep.items() if k != "seconds"}, "samples": 10,
            "repeats": [rep, rep], "repeat_spread_pct": 0.0, "unstable": False, "unstable_threshold_pct": 5.0,
            "output_checksum": "sha256:" + "ab" * 32}


@pytest.mark.export
def test_runner_without_torch_or_edge_se_writes_a_valid_record(artifacts, tmp_path):  # noqa: F811
    """What a board runs: the staged runner (device_bench's runner modules and contract) and nothing else."""
    stage = stage_runner(tmp_path / "stage")
    assert (stage / "contract" / "bench.schema.json").is_file(), "the runner validates against the staged schema"
    art = artifacts["tiny_se_litert_int8.tflite"]
    run = "import runpy; runpy.run_module('device_bench.runner', run_name='__main__')"
    cmd = [sys.executable, "-c", BLOCKER + run, str(art), "--manifest", f"{art}.json",
           *RunOptions(SPEC).argv(threads=1)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(stage)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    assert not jsonschema_lite.errors(rec, schemas.load("bench")), jsonschema_lite.errors(rec, schemas.load("bench"))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(schemas.load("bench")).validate(rec)
    assert rec["schema"] == record.SCHEMA and set(record.LATENCY_KEYS) <= set(rec) and "latency_ms" not in rec
    assert MeasureSpec.from_dict(rec["measure"]) == SPEC
    assert rec["samples"] == sum(r["samples"] for r in rec["repeats"]) >= SPEC.runs * SPEC.repeats


def test_runner_refuses_bad_measurement_flags_in_one_line(tmp_path, capsys):
    assert runner.main([str(tmp_path / "m.tflite"), "--manifest", str(tmp_path / "m.json"), "--runs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["device_bench.runner: error: --runs must be an integer >= 1, got 0"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("p50_ms"), "p50_ms: missing required key"),
        (lambda d: d.__setitem__("p50_ms", "1.2"), "p50_ms: expected number or null, got str"),
        (lambda d: d.__setitem__("samples", 0), "samples: 0 is below the minimum 1"),
        (lambda d: d["measure"].pop("runs"), "measure.runs: missing required key"),
        (lambda d: d["repeats"][0].__setitem__("samples", "5"), "repeats[0].samples: expected integer"),
        (lambda d: d.__setitem__("status", "fine"), "status:"),
    ],
)
def test_schema_rejects_a_missing_or_mistyped_latency_key(edit, field):
    good = _measured()
    record.validate(good, "rec")
    assert record.read_record(good) == good
    bad = copy.deepcopy(good)
    edit(bad)
    with pytest.raises(ContractError) as exc:
        record.validate(bad, "rec")
    assert field in str(exc.value) and "\n" not in str(exc.value) and str(exc.value).startswith("rec: ")
    with pytest.raises(ContractError, match="p50_ms|samples|measure|status"):
        record.read_record(bad)


def test_records_that_did_not_measure_carry_no_latency_keys():
    for status in ("error", "skipped"):
        record.validate({"schema": record.SCHEMA, "status": status, "device": "pi", "error": "unreachable"}, "rec")
    with pytest.raises(ContractError, match="p50_ms: missing required key"):
        record.validate({"schema": record.SCHEMA, "status": "ok", "device": "pi"}, "rec")
    record.validate({"schema": record.SCHEMA, "count_only": True, "runs": 3,
                     "output_checksum": "sha256:" + "0" * 64}, "rec")
    with pytest.raises(ContractError, match="edge-se/bench/9"):
        record.read_record({**_measured(), "schema": "edge-se/bench/9"})


def test_read_record_upgrades_a_v1_record():
    v1 = {"schema": record.SCHEMA_V1, "runner": "native", "warmup": 10, "runs": 50, "min_seconds": 1.0,
          "latency_ms": {"min": 1.0, "p50": 1.2, "p90": 1.5, "p99": 1.6, "mean": 1.25, "std": 0.1, "count": 10},
          "repeats": [{"min": 1.0, "p50": 1.2, "p90": 1.5, "p99": 1.6, "mean": 1.25, "std": 0.1, "count": 5,
                       "seconds": 0.006}] * 2, "repeat_spread_pct": 0.0, "unstable": False,
          "unstable_threshold_pct": 5.0}
    rec = record.read_record(v1)
    assert rec["schema"] == record.SCHEMA and rec["upgraded_from"] == record.SCHEMA_V1 and "latency_ms" not in rec
    assert (rec["p50_ms"], rec["p90_ms"], rec["p99_ms"], rec["min_ms"], rec["mean_ms"], rec["std_ms"],
            rec["samples"]) == (1.2, 1.5, 1.6, 1.0, 1.25, 0.1, 10)
    assert rec["repeats"][0] == {"min_ms": 1.0, "p50_ms": 1.2, "p90_ms": 1.5, "p99_ms": 1.6, "mean_ms": 1.25,
                                 "std_ms": 0.1, "samples": 5, "seconds": 0.006}
    assert rec["runs"] == 50 and "measure" not in rec, "v1 recorded no spec: none is invented"
    assert v1["latency_ms"]["p50"] == 1.2, "the input is not modified"
    # Written with no schema at all (older bench lines, the pipeline's cached cells): v1 too.
    assert record.read_record({"latency_ms": {"p50": 3.0}})["p50_ms"] == 3.0
    with pytest.raises(ContractError, match="p50_ms: expected number or null"):
        record.read_record({"schema": record.SCHEMA_V1, "latency_ms": {"p50": "fast"}})
    with pytest.raises(ContractError, match="latency_ms: expected an object"):
        record.read_record({"schema": record.SCHEMA_V1, "latency_ms": 3.0})


def test_lite_validator_agrees_with_jsonschema_on_bench_records():
    jsonschema = pytest.importorskip("jsonschema")
    schema = schemas.load("bench")
    good = _measured()
    cases = [good, {"schema": record.SCHEMA, "status": "error", "error": "x"}, {"schema": record.SCHEMA},
             record.upgrade({"latency_ms": {"p50": 1.0}})]
    for key in ("p50_ms", "samples", "repeats", "measure", "schema"):
        d = copy.deepcopy(good)
        d.pop(key)
        cases.append(d)
    for key, value in (("p50_ms", "1"), ("p50_ms", None), ("samples", 1.5), ("status", "error"), ("threads", 0),
                       ("measure", {**SPEC.to_dict(), "extra": 1}), ("output_checksum", "md5:x"), ("repeats", [])):
        d = copy.deepcopy(good)
        d[key] = value
        cases.append(d)
    for case in cases:
        ref_ok = jsonschema.Draft202012Validator(schema).is_valid(case)
        assert (not jsonschema_lite.errors(case, schema)) == ref_ok, case


def test_measure_spec_round_trips_through_run_options_and_the_runner_parser():
    for spec in (MeasureSpec(), MeasureSpec(warmup=0, runs=3, min_seconds=0.25, max_runs=9, repeats=1, cooldown_s=0.0,
                                            threads=2, affinity="0,1", seed=7, unstable_pct=12.5)):
        opts = RunOptions(spec, runner="python", timeout_s=5.0)
        ns = runner.build_parser().parse_args(["m.tflite", "--manifest", "m.json", *opts.argv()])
        assert from_namespace(ns) == spec
        ns = runner.build_parser().parse_args(["m.tflite", "--manifest", "m.json", *opts.argv(runs=1, seed=2)])
        assert from_namespace(ns) == spec.replace(runs=1, seed=2)
    opts = RunOptions().replace(threads=4, timeout_s=9.0)
    assert opts.measure == MeasureSpec(threads=4) and opts.timeout_s == 9.0
    # The runner's defaults are the spec's (transports pass every flag anyway).
    ns = runner.build_parser().parse_args(["m.tflite", "--manifest", "m.json"])
    assert from_namespace(ns) == MeasureSpec()


def test_native_runner_takes_every_flag_the_spec_writes():
    """runner.cpp parses options by name: every flag to_argv writes must be one it knows."""
    src = (REPO / "device_bench/native/runner.cpp").read_text()
    spec = MeasureSpec(affinity="0", max_runs=2)
    flags = [a for a in spec.to_argv() if a.startswith("--")]
    assert len(flags) == 10
    for flag in flags:
        assert f'k == "{flag}"' in src, f"the native runner does not take {flag}"
    assert '"edge-se/bench/1"' not in src and f'"{record.SCHEMA}"' in src.replace('\\"', '"')


class _Broken:
    name, kind, emulated = "broken", "local", False

    def __init__(self, result: dict) -> None:
        self.result = result

    def run(self, artifact, manifest, opts):
        return self.result


@pytest.mark.export
@pytest.mark.parametrize(
    ("result", "status", "needle"),
    [
        ({"schema": record.SCHEMA, "p50_ms": "fast"}, "error", "broken: runner output: p50_ms"),
        ({"schema": record.SCHEMA_V1, "latency_ms": {"p50": 2.0, "count": 4}}, "ok", None),
    ],
)
def test_bench_checks_every_runner_result_before_writing(
    artifacts, tmp_path, monkeypatch, result, status, needle  # noqa: F811
):
    monkeypatch.setattr("device_bench.bench.resolve", lambda device, inventory: (_Broken(result), None))
    out = tmp_path / "b.jsonl"
    (rec,) = bench([artifacts["tiny_se_litert_int8.tflite"]], ["broken"], {}, RunOptions(SPEC), out)
    assert rec["status"] == status and json.loads(out.read_text()) == rec
    record.validate(rec, "written")
    if needle:
        assert needle in rec["error"] and "p50_ms" not in rec
    else:
        assert rec["p50_ms"] == 2.0 and rec["upgraded_from"] == record.SCHEMA_V1
    assert rec["measure"] == SPEC.to_dict()
