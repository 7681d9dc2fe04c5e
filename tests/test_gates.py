"""Release gates: parsing with one-line errors, and every gate both met and violated on a recorded run."""

from __future__ import annotations

import pytest
from test_pipeline import FakeRunner, _cfg

from edge_se.errors import EdgeSeError
from pipeline.collect import load_cells
from pipeline.gates import Gates, Violation, check, parse_gates
from pipeline.run import run_sweep


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A recorded sweep (fake stages, real cells): int8 SQNR 20-30 dB, sizes 1-2 MB, p50 1-6 ms."""
    tmp = tmp_path_factory.mktemp("gates")
    run_sweep(_cfg(tmp), tmp / "run", runner=FakeRunner())
    return load_cells(tmp / "run")


@pytest.mark.parametrize(("doc", "needle"), [
    ({"min_sqnr": 20}, "x.toml: [gates].min_sqnr: unknown gate"),
    ({"min_sqnr_db": "20"}, "[gates].min_sqnr_db: expected a number, got '20'"),
    ({"min_top1_agreement": 99}, "[gates].min_top1_agreement: 99 outside 0.0..1.0"),
    ({"max_artifact_bytes": 1.5}, "[gates].max_artifact_bytes: expected an integer"),
    ({"max_p50_ms": 5}, "[gates].max_p50_ms: expected a table of device = ms"),
    ({"max_p50_ms": {"local": -1}}, "[gates].max_p50_ms.local: expected a number of ms > 0"),
    ({"parity": "yes"}, "[gates].parity: expected true or false"),
])
def test_a_bad_gate_is_one_line_naming_the_key(doc, needle):
    with pytest.raises(EdgeSeError) as err:
        parse_gates(doc, "x.toml: [gates]")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_model_table_overrides_only_what_it_names():
    base = parse_gates({"min_sqnr_db": 25, "max_p50_ms": {"local": 5}}, "g")
    own = parse_gates({"max_p50_ms": {"pi": 20}}, "m", base)
    assert own.min_sqnr_db == 25
    assert (own.p50_limit("local"), own.p50_limit("pi"), own.p50_limit("x")) == (5.0, 20.0, None)
    assert not Gates().active and own.active


def test_met_gates_give_no_violation(run):
    gates = Gates(min_sqnr_db=19.0, min_top1_agreement=0.98, max_p50_ms=(("local", 100.0),),
                  max_int8_fp32_ratio=100.0, max_artifact_bytes=10_000_000, parity=True)
    assert check(run, gates) == []


def test_each_violated_gate_names_the_cell_the_gate_and_both_numbers(run):
    sqnr = check(run, Gates(min_sqnr_db=1000.0))
    int8_exports = [r for r in run.stage("export") if r["params"]["dtype"] == "int8"]
    assert len(sqnr) == len(int8_exports) > 0, "one violation per int8 artifact"
    q = int8_exports[0]
    line = next(v for v in sqnr if v.cell == q["id"]).line()
    measured = q["manifest"]["fidelity"]["sqnr_db"]
    assert line == f"gate min_sqnr_db: {q['id']}: measured {measured:.4g}, limit >= 1000"

    size = check(run, Gates(max_artifact_bytes=1))
    assert len(size) == len(run.stage("export")) and all(v.measured >= 1e6 for v in size)
    slow = check(run, Gates(max_p50_ms=(("local", 0.5),)))
    local_benches = [b for b in run.stage("bench") if b["params"]["device"] == "local"]
    assert len(slow) == len(local_benches), "emulated devices are never latency-gated"
    assert all(v.cell.endswith("/local") and v.measured > 0.5 for v in slow)
    ratio = check(run, Gates(max_int8_fp32_ratio=1e-6))
    assert ratio and all("/int8/" in v.cell and v.measured > 1e-6 for v in ratio)


def test_per_model_gates_apply_to_the_model_and_its_twin(run):
    strict = {"mobilenetv3_small_050": Gates(max_artifact_bytes=1)}
    hits = check(run, Gates(), strict)
    assert hits and all(v.cell.split("/")[1].startswith("mobilenetv3_small_050") for v in hits)
    assert any(v.cell.split("/")[1].endswith("_nose") for v in hits)


def test_a_failed_parity_and_an_unmeasured_cell_fail_their_gates(run):
    export = next(r for r in run.stage("export"))
    export["manifest"]["parity"] = {"passed": False}
    cells = run.index["cells"]
    bench_id = next(cid for cid, e in cells.items() if e["stage"] == "bench")
    saved = dict(cells[bench_id])
    cells[bench_id] = {**saved, "status": "failed", "error": "device dropped"}
    try:
        parity = check(run, Gates(parity=True))
        assert [v.to_dict() for v in parity] == [{"cell": export["id"], "gate": "parity", "measured": "failed",
                                                  "limit": "pass"}]
        lost = check(run, Gates(max_p50_ms=(("local", 1e9),)))
        assert Violation(bench_id, "measured", None, "a finished cell") in lost
    finally:
        export["manifest"]["parity"] = {"passed": True, "max_abs_err": 1e-4}
        cells[bench_id] = saved


def test_the_report_lists_the_violations_only_when_the_sweep_had_gates(run):
    from pipeline.gates import write_verdict
    from pipeline.report import write_report

    md = run.run_dir / "report.md"
    write_report(run.run_dir)
    assert "Release gates" not in md.read_text(), "no [gates]: no section"
    gates = Gates(max_artifact_bytes=1)
    violations = check(run, gates)
    write_verdict(run.run_dir, gates, {}, violations)
    try:
        write_report(run.run_dir)
        text = md.read_text()
        assert f"{len(violations)} gate violation(s)" in text
        assert all(f"`{v.cell}`" in text for v in violations)
        write_verdict(run.run_dir, gates, {}, [])
        write_report(run.run_dir)
        assert "All gates met" in md.read_text()
    finally:
        (run.run_dir / "gates.json").unlink()


def _gated_config(tmp_path, gates: str):
    from test_pipeline import CONFIG

    path = tmp_path / "gated.toml"
    own = 'name = "efficientnet_phi0"\ngates = { max_artifact_bytes = 1 }\n'
    path.write_text(CONFIG.replace('name = "efficientnet_phi0"\n', own) + gates)
    return path


@pytest.mark.parametrize(("gates", "rc"), [("[gates]\nmin_sqnr_db = 1.0\n", 1), ("[gates]\nmin_sqnr_db = 1000.0\n", 1)])
def test_edge_se_run_exits_1_on_a_violated_gate_naming_it(tmp_path, monkeypatch, capsys, gates, rc):
    """phi0's own gate (1 byte) always fails; the global SQNR gate fails only at 1000 dB."""
    import pipeline.run
    from edge_se.cli import main

    real = pipeline.run.run_sweep
    monkeypatch.setattr(pipeline.run, "run_sweep", lambda cfg, out, **kw: real(cfg, out, runner=FakeRunner(), **kw))
    out = tmp_path / "run"
    assert main(["run", str(_gated_config(tmp_path, gates)), "--out", str(out), "--no-report"]) == rc
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("edge-se run: gate ")]
    assert lines and all("efficientnet_phi0" in ln or "min_sqnr_db" in ln for ln in lines)
    assert any(ln.startswith("edge-se run: gate max_artifact_bytes: export/efficientnet_phi0/") for ln in lines)
    assert any("min_sqnr_db" in ln for ln in lines) == ("1000" in gates)
    import json

    verdict = json.loads((out / "gates.json").read_text())
    assert verdict["passed"] is False and verdict["gates"]["models"]["efficientnet_phi0"]["max_artifact_bytes"] == 1


def test_edge_se_run_exits_0_when_every_gate_is_met(tmp_path, monkeypatch, capsys):
    from test_pipeline import CONFIG

    import pipeline.run
    from edge_se.cli import main

    real = pipeline.run.run_sweep
    monkeypatch.setattr(pipeline.run, "run_sweep", lambda cfg, out, **kw: real(cfg, out, runner=FakeRunner(), **kw))
    path = tmp_path / "ok.toml"
    path.write_text(CONFIG + "[gates]\nmin_sqnr_db = 1.0\nparity = true\nmax_p50_ms = { local = 1000.0 }\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-report"]) == 0
    assert "edge-se run: gates: all met" in capsys.readouterr().err


def test_a_bad_gate_in_a_model_table_names_it(tmp_path):
    from pipeline.config import load_config

    path = _gated_config(tmp_path, "").read_text().replace("max_artifact_bytes = 1", "max_bytes = 1")
    (tmp_path / "bad.toml").write_text(path)
    with pytest.raises(EdgeSeError, match=r"bad.toml: \[models\[2\]\].gates.max_bytes: unknown gate"):
        load_config(tmp_path / "bad.toml")
