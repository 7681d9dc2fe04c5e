"""The native runner's SE-gate anomaly score (``gate_score``) equals the Python runner's.

The artifacts are the tiny conv + SE model of :mod:`device_artifacts` (16 px, one SE block ``se`` of
16 channels), exported gated with hand-made stats through :func:`export.pipeline.export_one`, as in
tests/test_gate_outputs.py. Both runners score the last measured inference's gate outputs; the
native value must equal the Python one to 1e-9 relative: both compute in double from the same
float32 output bytes (same seed, same checksum), only the summation order differs (numpy's
pairwise sums and matmul against plain loops), which moves the result by a few ulp.

Manifests written by hand (slots with a non-zero ``offset``, stats that do not fit) sit beside the
exported artifact: the runners check the artifact's sha256 against the manifest's, and no hash
covers the manifest itself, so editing ``gate_outputs`` keeps it valid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from device_artifacts import RESOLUTION, _model, gate_stats

from contract.bench import validate
from device_bench.native_build import build

REPO = Path(__file__).resolve().parent.parent
MEASURE = ["--runs", "2", "--warmup", "0", "--min-seconds", "0", "--repeats", "1"]
REL = 1e-9
"""Native vs Python score: the same float32 gates in double, summed in another order (a few ulp)."""


_stats = gate_stats


def _ppca_block(name: str, channels: int, k: int, rng: np.random.Generator) -> dict:
    """A stats block with ``k < channels`` orthonormal components: the residual term counts."""
    v, _ = np.linalg.qr(rng.standard_normal((channels, k)))
    return {"name": name, "channels": channels, "mean": rng.uniform(0.3, 0.7, channels).tolist(),
            "components": v.tolist(), "eigenvalues": rng.uniform(0.005, 0.05, k).tolist(),
            "residual_variance": 0.01, "norm_mean": float(rng.uniform(1, 3)), "norm_std": float(rng.uniform(0.5, 2))}


def _export(tmp: Path, fmt: str, dtype: str, *, gated: bool, stats: dict | None = None) -> dict:
    import torch

    from export.pipeline import ExportOptions, export_one
    from quantize.calibration import load_calibration

    torch.set_num_threads(1)
    calib = load_calibration("random", RESOLUTION, samples=8, seed=0)
    opts = ExportOptions(resolution=RESOLUTION, gate_outputs=gated, gate_stats=stats)
    return export_one(_model(), name="tiny_se", fmt=fmt, dtype=dtype, out_dir=tmp, opts=opts, calib=calib)


@pytest.fixture(scope="module")
def native() -> Path:
    return build("host")


_GATED: dict[str, tuple[Path, Path]] = {}


def _gated(dtype: str, tmp_path_factory) -> tuple[Path, Path]:
    """(artifact, manifest) of the tiny model exported to .pte with its gates and ``_stats()``, once per dtype."""
    if dtype not in _GATED:
        rec = _export(tmp_path_factory.mktemp(f"gated_{dtype}"), "pte", dtype, gated=True, stats=_stats())
        _GATED[dtype] = Path(rec["path"]), Path(rec["manifest"])
    return _GATED[dtype]


@pytest.fixture(scope="module", params=["fp32", "int8"])
def gated(request, tmp_path_factory) -> tuple[Path, Path]:
    """Both dtypes: the score's agreement is checked on each."""
    return _gated(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def gated_fp32(tmp_path_factory) -> tuple[Path, Path]:
    """One dtype: the manifest errors are found before any output is read, whatever the dtype."""
    return _gated("fp32", tmp_path_factory)


def _python(art: Path, manifest: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "device_bench.runner", str(art), "--manifest", str(manifest), *MEASURE]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _native(binary: Path, art: Path, manifest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), str(art), "--manifest", str(manifest), *MEASURE],
                          capture_output=True, text=True, timeout=300)


def _both(binary: Path, art: Path, manifest: Path) -> tuple[dict, dict]:
    py, nat = _python(art, manifest), _native(binary, art, manifest)
    assert py.returncode == 0, py.stderr[-2000:]
    assert nat.returncode == 0, nat.stderr[-2000:]
    py_res, nat_res = json.loads(py.stdout), json.loads(nat.stdout)
    validate(nat_res, "native runner output")  # contract/bench.schema.json, gate_score included
    # Same seed -> the same inputs -> the same output bytes: both score the same float32 gates.
    assert nat_res["output_checksum"] == py_res["output_checksum"]
    assert nat_res["outputs_repeatable"] is True and py_res["outputs_repeatable"] is True
    return py_res["gate_score"], nat_res["gate_score"]


def _with_gate_outputs(manifest: Path, out: Path, gate_outputs: dict) -> Path:
    doc = json.loads(manifest.read_text())
    doc["gate_outputs"] = gate_outputs
    out.write_text(json.dumps(doc))
    return out


def _slots(manifest: Path) -> list[dict]:
    return json.loads(manifest.read_text())["gate_outputs"]["blocks"]


@pytest.mark.slow
@pytest.mark.export
def test_native_gate_score_equals_python(gated, native):
    art, manifest = gated
    stats = _stats()
    assert json.loads(manifest.read_text())["gate_outputs"]["stats"] == stats
    py, nat = _both(native, art, manifest)
    print(f"{art.name}: python {py['value']!r}, native {nat['value']!r}")
    assert nat["value"] == pytest.approx(py["value"], rel=REL, abs=0)
    assert nat["threshold"] == py["threshold"] == stats["threshold"]
    assert nat["flagged"] is py["flagged"] is (py["value"] > stats["threshold"])
    assert nat["method"] == py["method"] == "ppca-mahalanobis"
    assert nat["blocks"] == py["blocks"] == 1


@pytest.mark.slow
@pytest.mark.export
def test_native_gate_score_reads_slots_by_offset(gated, native, tmp_path):
    """Two slots cut from the one 16-channel gate output (offsets 0 and 6), two PPCA blocks (k < C)."""
    art, manifest = gated
    (slot,) = _slots(manifest)
    assert slot["channels"] == 16 and slot.get("offset", 0) == 0
    rng = np.random.default_rng(5)
    # Stats order differs from slot order: the score follows the stats.
    stats = {**_stats(), "threshold": 1e6, "blocks": [_ppca_block("b", 10, 4, rng), _ppca_block("a", 6, 3, rng)]}
    slots = [{"name": "a", "channels": 6, "output_index": slot["output_index"], "offset": 0},
             {"name": "b", "channels": 10, "output_index": slot["output_index"], "offset": 6}]
    edited = _with_gate_outputs(manifest, tmp_path / "offsets.json", {"blocks": slots, "stats": stats})
    py, nat = _both(native, art, edited)
    print(f"{art.name} (offsets): python {py['value']!r}, native {nat['value']!r}")
    assert nat["value"] == pytest.approx(py["value"], rel=REL, abs=0)
    assert nat["flagged"] is py["flagged"] is False
    assert nat["blocks"] == py["blocks"] == 2
    # A different cut of the same gates gives a different score: the offset is honoured.
    shifted = [{**slots[0], "offset": 10}, {**slots[1], "offset": 0}]
    other = _with_gate_outputs(manifest, tmp_path / "shifted.json", {"blocks": shifted, "stats": stats})
    py2, nat2 = _both(native, art, other)
    assert nat2["value"] == pytest.approx(py2["value"], rel=REL, abs=0)
    assert nat2["value"] != pytest.approx(nat["value"], rel=1e-6)
    # The other combination: the largest block z-score instead of their sum, in both runners.
    for how in ("max-z", "sum-z"):
        edited = _with_gate_outputs(manifest, tmp_path / f"{how}.json",
                                    {"blocks": slots, "stats": {**stats, "combine": how}})
        py3, nat3 = _both(native, art, edited)
        assert nat3["value"] == pytest.approx(py3["value"], rel=REL, abs=0), how
        if how == "sum-z":
            assert nat3["value"] == pytest.approx(nat["value"], rel=REL)  # the stats above are sum-z


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("case", ["no-slot", "outside", "channels", "method"])
def test_gate_stats_that_do_not_fit_exit_2(gated_fp32, native, tmp_path, case):
    art, manifest = gated_fp32
    (slot,) = _slots(manifest)
    slots, stats = [dict(slot)], _stats()
    if case == "no-slot":
        stats["blocks"].append({**stats["blocks"][0], "name": "features.9.se"})
        named = "features.9.se"
    elif case == "outside":  # 8..24 of a 16-channel output
        slots = [{**slot, "offset": 8}]
        named = "'se'"
    elif case == "channels":  # the slot fits the output (12 of 16 values); the stats were fitted for 16
        slots = [{**slot, "channels": 12}]
        named = "'se': gates have 12 channels"
    else:
        stats["method"] = "full-mahalanobis"
        named = "full-mahalanobis"
    edited = _with_gate_outputs(manifest, tmp_path / f"{case}.json", {"blocks": slots, "stats": stats})
    nat = _native(native, art, edited)
    assert nat.returncode == 2, nat.stdout[-2000:]
    assert nat.stdout == ""
    lines = [ln for ln in nat.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("device_bench.native_runner: error: ")]
    assert len(errors) == 1 and named in errors[0] and str(edited) in errors[0], nat.stderr
    if case != "outside":  # a manifest error: found before the program is even loaded
        assert lines == errors, nat.stderr
    if case == "no-slot":  # the Python runner refuses it too (its checks one by one: tests/test_anomaly.py)
        py = _python(art, edited)
        assert py.returncode == 2 and "gate_outputs" in py.stderr, py.stderr[-2000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
