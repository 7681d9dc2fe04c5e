"""``edge-se verify``: a good artifact passes; corrupt, truncated and mismatched ones fail in one line."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export_cache import exported

from contract.files import sha256_bytes
from contract.formats import manifest_path
from edge_se.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.export]

EDGE_SE = Path(sys.executable).with_name("edge-se")


def _copy(fmt: str, dtype: str, dst: Path) -> Path:
    """Copy one cached mobilenet artifact with its manifest and parity data into ``dst``."""
    out, rc, records, err = exported("mobilenetv3_small_100")
    assert rc == 0, err[-3000:]
    rec = next(r for r in records if r["format"] == fmt and r["dtype"] == dtype)
    src = Path(rec["path"])
    for p in (src, manifest_path(src), src.with_name(src.name + ".parity.npz")):
        shutil.copy(p, dst / p.name)
    return dst / src.name


def _verify(path: Path, capsys) -> tuple[int, str, str]:
    rc = main(["verify", str(path)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("edge-se verify: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("fmt", ["pte", "tflite"])
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_verify_passes_on_a_good_artifact(tmp_path, capsys, fmt, dtype):
    art = _copy(fmt, dtype, tmp_path)
    rc, out, err = _verify(art, capsys)
    assert rc == 0, err
    result = json.loads(out)
    assert result["parity"]["passed"] is True and result["sha256_ok"] is True
    assert result["format"] == fmt and result["dtype"] == dtype


@pytest.mark.parametrize("fmt", ["pte", "tflite"])
def test_verify_rejects_a_corrupt_artifact(tmp_path, capsys, fmt):
    art = _copy(fmt, "fp32", tmp_path)
    data = bytearray(art.read_bytes())
    for i in range(0, len(data), 4096):  # same size, scrambled content
        data[i] ^= 0xFF
    art.write_bytes(bytes(data))
    rc, out, err = _verify(art, capsys)
    _one_line_error(rc, err, "sha256", art.name)
    assert out == ""


@pytest.mark.parametrize("fmt", ["pte", "tflite"])
def test_verify_rejects_a_truncated_artifact(tmp_path, capsys, fmt):
    art = _copy(fmt, "int8", tmp_path)
    data = art.read_bytes()
    art.write_bytes(data[: len(data) // 3])
    rc, _, err = _verify(art, capsys)
    _one_line_error(rc, err, "truncated", art.name)


def test_verify_rejects_a_manifest_with_the_wrong_input_shape(tmp_path, capsys):
    art = _copy("tflite", "fp32", tmp_path)
    mpath = manifest_path(art)
    m = json.loads(mpath.read_text())
    m["inputs"][0]["shape"] = [1, 3, 224, 224]  # a manifest from another export
    mpath.write_text(json.dumps(m))
    rc, _, err = _verify(art, capsys)
    _one_line_error(rc, err, "shape", "[1, 3, 224, 224]")


def test_verify_rejects_a_manifest_of_another_artifact(tmp_path, capsys):
    pte = _copy("pte", "fp32", tmp_path)
    tfl = _copy("tflite", "fp32", tmp_path)
    shutil.copy(manifest_path(tfl), manifest_path(pte))
    rc, _, err = _verify(pte, capsys)
    _one_line_error(rc, err, "describes")


def test_verify_rejects_broken_manifest_json_and_missing_keys(tmp_path, capsys):
    art = _copy("pte", "fp32", tmp_path)
    mpath = manifest_path(art)
    good = json.loads(mpath.read_text())
    mpath.write_text("{not json")
    rc, _, err = _verify(art, capsys)
    _one_line_error(rc, err, "not valid JSON")
    del good["sha256"]
    mpath.write_text(json.dumps(good))
    rc, _, err = _verify(art, capsys)
    _one_line_error(rc, err, "sha256")
    mpath.unlink()
    rc, _, err = _verify(art, capsys)
    _one_line_error(rc, err, "no manifest")


def test_verify_reports_figures_and_exits_1_when_parity_no_longer_holds(tmp_path, capsys):
    art = _copy("pte", "fp32", tmp_path)
    mpath = manifest_path(art)
    m = json.loads(mpath.read_text())
    golden = tmp_path / m["parity"]["golden"]["file"]
    with np.load(golden) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["reference"] = arrays["reference"] * 1.5  # the stored reference no longer matches
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    golden.write_bytes(buf.getvalue())
    m["parity"]["golden"]["sha256"] = sha256_bytes(buf.getvalue())
    mpath.write_text(json.dumps(m))
    rc, out, err = _verify(art, capsys)
    assert rc == 1, err
    figures = json.loads(out)["parity"]
    assert figures["passed"] is False and figures["max_rel_error"] > figures["rtol"]
    assert "Traceback" not in err


def test_verify_missing_artifact(tmp_path, capsys):
    rc, _, err = _verify(tmp_path / "nope_xnnpack_fp32.pte", capsys)
    _one_line_error(rc, err, "does not exist")


def test_verify_through_the_installed_command(tmp_path):
    if not EDGE_SE.exists():
        pytest.skip(f"{EDGE_SE} is not installed (run `make setup`)")
    art = _copy("tflite", "fp32", tmp_path)
    art.write_bytes(art.read_bytes()[:1000])
    proc = subprocess.run([str(EDGE_SE), "verify", str(art)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edge-se verify: error:")]
    assert len(errors) == 1 and "truncated" in errors[0], proc.stderr
