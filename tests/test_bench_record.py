"""The bench record (contract.bench, edge-se/bench/2) and the one measurement spec every timing path uses."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from device_artifacts import BLOCKER, artifacts  # noqa: F401  (artifacts: session fixture)

from contract import bench as record
from contract import jsonschema_lite, schemas
from contract.errors import ContractError
from contract.measure import ORDERS, MeasureSpec, from_namespace, timing_order
from device_bench import runner, stats
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
    assert set(record.STABILITY_KEYS) <= set(rec) and rec["stability"] in ("stable", "noisy", "unstable")
    record.validate(rec, "runner output", fresh=True)


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


def _with_stability(rec: dict) -> dict:
    """``rec`` with the stability figures this checkout's runners write (figures made up, shape real)."""
    figures = {"trimmed_mean_ms": 1.24, "cv_pct": 8.0, "p99_p50": 1.33}
    return {**rec, **figures, "stability": "stable", "stability_reasons": [],
            "repeats": [{**r, **figures} for r in rec["repeats"]]}


def test_stability_keys_are_optional_when_reading_and_required_of_what_runners_write():
    old = _measured()  # written before the stability figures: still a valid record
    record.validate(old, "old")
    assert record.read_record(old) == old
    with pytest.raises(ContractError, match=r"^fresh: trimmed_mean_ms: missing required key \(and \d+ more\)$"):
        record.validate(old, "fresh", fresh=True)
    new = _with_stability(old)
    record.validate(new, "new", fresh=True)
    no_repeat_cv = copy.deepcopy(new)
    del no_repeat_cv["repeats"][1]["cv_pct"]
    record.validate(no_repeat_cv, "read")
    with pytest.raises(ContractError, match=r"^fresh: repeats\[1\]\.cv_pct: missing required key$"):
        record.validate(no_repeat_cv, "fresh", fresh=True)
    unknown = {**new, "cv_pct": None, "p99_p50": None, "trimmed_mean_ms": None,
               "stability_reasons": ["cv_pct not known", "p99_p50 not known"]}  # adb's tools
    record.validate(unknown, "adb", fresh=True)
    for key, value, needle in (("stability", "fine", "stability: 'fine' is not one of"),
                               ("stability_reasons", "none", "stability_reasons: expected array"),
                               ("cv_pct", -1.0, "cv_pct: -1.0 is below the minimum 0"),
                               ("order_mode", "random", "order_mode: 'random' is not one of"),
                               ("order_index", -1, "order_index: -1 is below the minimum 0")):
        with pytest.raises(ContractError, match=re.escape(needle)):
            record.validate({**new, key: value}, "rec")
    # Not measured and count-only records carry no figures, fresh or not.
    record.validate({"schema": record.SCHEMA, "status": "error", "error": "x"}, "rec", fresh=True)
    record.validate({"schema": record.SCHEMA, "count_only": True, "runs": 3,
                     "output_checksum": "sha256:" + "0" * 64}, "rec", fresh=True)


def test_timing_order_is_a_seeded_permutation():
    for n in (0, 1, 2, 5, 12):
        for seed in (0, 1, 7):
            order = timing_order(n, order="shuffled", seed=seed)
            assert sorted(order) == list(range(n)), "a permutation"
            assert order == timing_order(n, order="shuffled", seed=seed), "reproducible for a seed"
        assert timing_order(n, order="given", seed=3) == list(range(n)), "given keeps the order"
    # Another seed, another order (for these two seeds and n = 8; a shuffle can repeat by chance).
    assert timing_order(8, order="shuffled", seed=0) != timing_order(8, order="shuffled", seed=1)
    assert timing_order(8, order="shuffled", seed=0) != list(range(8))
    assert timing_order(3) == timing_order(3, order="shuffled", seed=MeasureSpec().seed), "default: shuffled"
    assert ORDERS == ("given", "shuffled")
    props = schemas.load("bench")["properties"]
    assert props["order_mode"]["enum"] == list(ORDERS), "the schema lists exactly contract.measure.ORDERS"
    assert props["stability"]["enum"] == list(get_args(stats.Stability)), "... and device_bench.stats's verdicts"
    with pytest.raises(ContractError) as exc:
        timing_order(3, order="random")
    assert str(exc.value) == "--order 'random' is not valid; valid: given, shuffled"


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
    cases.append(_with_stability(good))
    for key, value in (("p50_ms", "1"), ("p50_ms", None), ("samples", 1.5), ("status", "error"), ("threads", 0),
                       ("measure", {**SPEC.to_dict(), "extra": 1}), ("output_checksum", "md5:x"), ("repeats", []),
                       ("stability", "fine"), ("stability", None), ("stability_reasons", ["x", 1]), ("cv_pct", None),
                       ("cv_pct", -2), ("p99_p50", "2"), ("trimmed_mean_ms", None), ("order", ["a", "b"]),
                       ("order", "a"), ("order_index", 0), ("order_index", 1.5), ("order_mode", "given")):
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


class _Recording:
    """A transport that records the order it is asked to time artifacts in and returns a valid record."""

    name, kind, emulated = "fake", "local", False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, artifact, manifest, opts):
        self.calls.append(str(artifact))
        return _with_stability(_measured())


@pytest.mark.export
@pytest.mark.parametrize("order", ["shuffled", "given"])
def test_bench_times_artifacts_in_the_seeded_order_and_records_it(artifacts, tmp_path, monkeypatch, order):  # noqa: F811
    fake = _Recording()
    monkeypatch.setattr("device_bench.bench.resolve", lambda device, inventory: (fake, None))
    arts = [str(artifacts[n]) for n in sorted(artifacts)] * 2  # 8 jobs: a shuffle of 8 is rarely the identity
    spec = SPEC.replace(seed=5)
    out = tmp_path / "b.jsonl"
    recs = bench(arts, ["fake"], {}, RunOptions(spec), out, order=order)
    sequence = timing_order(len(arts), order=order, seed=spec.seed)
    assert fake.calls == [arts[i] for i in sequence], "timed in timing_order(seed=measure.seed)"
    if order == "shuffled":
        assert fake.calls != arts
    assert [r["artifact"] for r in recs] == arts, "returned in the given order"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["order_index"] for r in lines] == list(range(len(arts))), "the file holds them in timing order"
    for rec in recs:
        record.validate(rec, "written", fresh=True)
        assert rec["order_mode"] == order and rec["order"] == fake.calls
        assert rec["order"][rec["order_index"]] == rec["artifact"]


def test_bench_refuses_an_unknown_order_before_anything_runs(tmp_path):
    out = tmp_path / "b.jsonl"
    with pytest.raises(ContractError, match="^--order 'random' is not valid; valid: given, shuffled$"):
        bench([tmp_path / "missing.pte"], ["local"], {}, RunOptions(SPEC), out, order="random")
    assert not out.exists()
