"""The torch-free contract: manifest schema, formats and naming, measurement spec, atomic files."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract import jsonschema_lite, schemas
from contract.errors import ContractError
from contract.files import atomic_path, sha256_file, write_text
from contract.formats import DTYPES, FORMATS, GATE_LAYOUTS, artifact_name, manifest_path
from contract.manifest import SCHEMA, load, read_manifest, write_manifest
from contract.measure import MeasureSpec

ROOT = Path(__file__).resolve().parent.parent


def _manifest(tmp_path: Path) -> tuple[Path, dict]:
    art = tmp_path / artifact_name("m", "pte", "fp32")
    art.write_bytes(b"\0" * 16)
    doc = {
        "schema": SCHEMA, "artifact": art.name, "format": "pte", "backend": "xnnpack", "dtype": "fp32",
        "model": "m", "resolution": 32,
        "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32", "layout": "NCHW",
                    "scale": None, "zero_point": None}],
        "outputs": [{"name": "output_0", "shape": [1, 10], "dtype": "float32"}],
        "quantization": None, "params": 10, "macs": 100, "se_params": 0, "se_macs": 0,
        "size_bytes": 16, "sha256": sha256_file(art), "versions": {"torch": None}, "parity": {"passed": True},
        "delegation": None,
    }
    return art, doc


def test_manifest_round_trip(tmp_path):
    art, doc = _manifest(tmp_path)
    path = write_manifest(art, doc)
    assert path == manifest_path(art)
    m = read_manifest(art)
    assert (m.format, m.backend, m.resolution, m.inputs[0].shape) == ("pte", "xnnpack", 32, (1, 3, 32, 32))
    assert m.artifact_path == art and "parity" in m and m["params"] == 10


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d.pop("sha256"), "sha256: missing required key"),
        (lambda d: d.__setitem__("resolution", "32"), "resolution: expected integer"),
        (lambda d: d.__setitem__("format", "onnx"), "format:"),
        (lambda d: d["inputs"][0].__setitem__("shape", [1, 0]), "inputs[0].shape[1]"),
        (lambda d: d["inputs"][0].pop("dtype"), "inputs[0].dtype: missing required key"),
        (lambda d: d.__setitem__("schema", "edge-se/manifest/0"), "schema 'edge-se/manifest/0' is not supported"),
    ],
)
def test_schema_rejects_a_missing_or_mistyped_key_naming_it(tmp_path, edit, field):
    art, doc = _manifest(tmp_path)
    bad = copy.deepcopy(doc)
    edit(bad)
    with pytest.raises(ContractError, match=None) as exc:
        write_manifest(art, bad)
    assert field in str(exc.value) and "\n" not in str(exc.value)
    assert not manifest_path(art).exists()  # nothing written on a bad document
    manifest_path(art).write_text(json.dumps(bad))
    with pytest.raises(ContractError) as exc:
        read_manifest(art)
    assert field in str(exc.value) and str(manifest_path(art)) in str(exc.value)


def test_lite_validator_agrees_with_jsonschema(tmp_path):
    """Our stdlib validator must accept and reject exactly what the reference implementation does."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = schemas.load("manifest")
    _, doc = _manifest(tmp_path)
    cases = [doc]
    for key in ("sha256", "inputs", "model"):
        d = copy.deepcopy(doc)
        d.pop(key)
        cases.append(d)
    for key, value in (("resolution", 0), ("size_bytes", 1.5), ("dtype", "fp16"), ("sha256", "xyz"),
                       ("inputs", []), ("macs", None), ("versions", {"torch": 3})):
        d = copy.deepcopy(doc)
        d[key] = value
        cases.append(d)
    for case in cases:
        ref_ok = jsonschema.Draft202012Validator(schema).is_valid(case)
        assert (not jsonschema_lite.errors(case, schema)) == ref_ok, case


def test_committed_example_manifests_validate():
    """The manifests the tests' device artifacts use follow the schema (one definition)."""
    for path in ROOT.glob("results/**/*.pte.json"):
        load(path)


def test_formats_and_naming():
    assert artifact_name("efficientnet_b0", "pte", "int8") == "efficientnet_b0_xnnpack_int8.pte"
    assert {artifact_name("m", f, "fp32").rsplit(".", 1)[1] for f in FORMATS} == {s.ext for s in FORMATS.values()}
    with pytest.raises(ContractError, match="--format: unknown format 'onnx'"):
        artifact_name("m", "onnx", "fp32")


def test_measure_spec_argv_round_trip():
    for spec in (MeasureSpec(), MeasureSpec(runs=3, min_seconds=0.25, repeats=1, affinity="0,1", seed=7,
                                            cooldown_s=0.0, unstable_pct=12.5, max_runs=9, threads=2)):
        assert MeasureSpec.from_argv(spec.to_argv()) == spec
        assert MeasureSpec.from_dict(spec.to_dict()) == spec
    assert MeasureSpec.from_argv(["--cooldown", "2"]).cooldown_s == 2.0  # the runners' spelling


@pytest.mark.parametrize("bad", [{"runs": 0}, {"threads": 0}, {"min_seconds": -1.0}, {"affinity": "a,b"}])
def test_measure_spec_rejects_bad_values_naming_the_flag(bad):
    with pytest.raises(ContractError, match="--" + next(iter(bad)).replace("_", "-")):
        MeasureSpec(**bad)
    with pytest.raises(ContractError, match="unknown key"):
        MeasureSpec.from_dict({"runz": 3})


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "good.txt"
    write_text(target, "good\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("converter died")
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["good.txt"]


def test_appends_from_two_processes_lose_no_line(tmp_path):
    # Two bench runs append to one results file; before the lock each read the file, wrote its copy
    # and renamed it into place, so one run's line could vanish (measured: a bench-quant row lost).
    target = tmp_path / "r.jsonl"
    code = ("import sys; from contract.files import append_line\n"
            "for i in range(150): append_line(sys.argv[1], f'{sys.argv[2]}-{i}')")
    root = str(Path(__file__).resolve().parent.parent)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), tag], cwd=root) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = target.read_text().splitlines()
    assert sorted(lines) == sorted(f"{t}-{i}" for t in "ab" for i in range(150))


def test_contract_imports_no_torch():
    code = ("import sys, contract.manifest, contract.measure, contract.bench, contract.files, contract.formats; "
            "bad = [m for m in ('torch', 'numpy', 'edge_se') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_enums_are_the_format_table():
    """The schema file is static JSON: it must list exactly the formats and backends of contract.formats."""
    props = schemas.load("manifest")["properties"]
    assert props["format"]["enum"] == list(FORMATS)
    assert props["backend"]["enum"] == [s.backend for s in FORMATS.values()]
    assert props["dtype"]["enum"] == list(DTYPES)


def test_the_manifest_schema_names_the_gate_layouts_the_code_writes():
    gate = schemas.load("manifest")["properties"]["gate_outputs"]["properties"]
    assert tuple(gate["layout"]["enum"]) == GATE_LAYOUTS
