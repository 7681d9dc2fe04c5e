"""Export to .pte and .tflite, fp32 and int8, with the parity check asserted (slow: real conversions)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_cache import RESOLUTION, exported

from contract.errors import ContractError
from contract.files import sha256_file
from contract.formats import artifact_name
from contract.manifest import REQUIRED_KEYS, read_manifest
from export import parity as par
from export.pipeline import Calibration, ExportOptions, ParityFailure, export_one, parity_inputs
from export.versions import VERSIONED
from quantize.int8_ops import TARGET_REWRITES

FORMATS = ("pte", "tflite")
DTYPES = ("fp32", "int8")


#: What each whole-family export test builds. EfficientNet-B0 is here for its int8 graph (49 swish and
#: 16 sigmoid gates int8, one partition); its fp32 lowering is the path MobileNetV3's fp32 artifacts and
#: SE-ResNet-50's take, and its two fp32 conversions cost about 75 s of the suite on 2 cores.
EXPORTED = {"mobilenetv3_small_100": "all", "efficientnet_b0": "int8"}
CASES = [(m, f, d) for m, dtypes in EXPORTED.items() for f in FORMATS for d in DTYPES if dtypes in ("all", d)]


def _record(model: str, fmt: str, dtype: str) -> dict:
    out, rc, records, err = exported(model, EXPORTED[model])
    assert rc == 0, f"export {model} exited {rc}:\n{err[-3000:]}"
    match = [r for r in records if r["format"] == fmt and r["dtype"] == dtype]
    assert len(match) == 1, f"expected one {fmt}/{dtype} record, got {records}"
    return match[0]


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize(("model", "fmt", "dtype"), CASES)
def test_export_writes_verified_artifact_and_manifest(model, fmt, dtype):
    rec = _record(model, fmt, dtype)
    path = Path(rec["path"])
    assert path.name == artifact_name(model, fmt, dtype)
    assert re.fullmatch(rf"{model}_(xnnpack|litert)_{dtype}\.(pte|tflite)", path.name)
    for key in ("path", "manifest", "format", "dtype", "size_bytes", "parity"):
        assert key in rec
    assert rec["parity"]["passed"] is True, json.dumps(rec["parity"], indent=1)
    m = read_manifest(path)
    assert all(k in m for k in REQUIRED_KEYS)
    assert m["size_bytes"] == path.stat().st_size == rec["size_bytes"]
    assert m["sha256"] == sha256_file(path)
    assert m["resolution"] == RESOLUTION
    assert set(m["versions"]) == set(VERSIONED) and m["versions"]["torch"] and m["versions"]["executorch"]
    assert m["params"] > 0 and m["macs"] > 0 and m["se_params"] > 0
    assert (path.parent / m["parity"]["golden"]["file"]).is_file()
    assert not list(path.parent.glob(".*.tmp")), "a temporary file of an atomic write was left behind"

    if dtype == "fp32":
        figures = rec["parity"]
        # XNNPACK reorders float sums; relative to the logits' scale the error must stay tiny.
        assert figures["max_rel_error"] <= par.FP32_RTOL, figures
        assert figures["top1_agreement"] == 1.0
        assert m["inputs"][0]["dtype"] == "float32" and m["quantization"] is None
    else:
        vq, vf = rec["parity"]["vs_quantized"], rec["parity"]["vs_float"]
        assert vq["cosine"] >= par.INT8_REF_MIN_COSINE and vf["cosine"] >= par.INT8_MIN_COSINE, rec["parity"]
        assert float(vf["sqnr_db"]) >= par.INT8_MIN_SQNR_DB
        q = m["quantization"]
        assert q["engine"] == "torchao" and q["policy"] == ["ptq"]
        # The int8 rewrites (quantize.int8_ops): the whole graph in one delegate partition, nothing
        # outside it, and no operator computing in float between dequantize and quantize.
        assert q["int8_rewrites"] == list(TARGET_REWRITES[fmt])
        rep = m["partitions"]
        assert rep["partitions"] == 1 and rep["ops_outside_delegate"] == {}, rep
        assert rep["float_ops_in_int8"] == {}, rep
        if fmt == "tflite":
            # full-integer model: int8 in and out, with the model's own scale and zero point recorded
            for t in (m["inputs"][0], m["outputs"][0]):
                assert t["dtype"] == "int8" and t["scale"] > 0 and -128 <= t["zero_point"] <= 127, t
            assert q["input"]["scale"] == m["inputs"][0]["scale"]
        else:
            assert m["inputs"][0]["dtype"] == "float32"
            assert m["outputs"][0]["dtype"] == "float32"
            assert q["output"]["scale"] and q["output"]["scale"] > 0
    if fmt == "pte":
        d = m["delegation"]
        assert d["partitions"] >= 1 and d["delegated"] > 0
        assert "aten.convolution" in " ".join(d["delegated_ops"])
        # Nothing outside the SE gates may run in the portable kernels.
        assert d["non_delegated_ops"]["other"] == {}, d
        assert d["warnings"] == []
    else:
        assert m["delegation"]["partitions"] >= 1
        assert m["inputs"][0]["shape"] == [1, 3, RESOLUTION, RESOLUTION] and m["inputs"][0]["layout"] == "NCHW"


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("fmt", FORMATS)
def test_seresnet50_fp32_exports(fmt):
    out, rc, records, err = exported("seresnet50", "fp32")
    assert rc == 0, err[-3000:]
    rec = next(r for r in records if r["format"] == fmt)
    assert rec["parity"]["passed"] is True and rec["parity"]["max_rel_error"] <= par.FP32_RTOL, rec["parity"]
    m = read_manifest(rec["path"])
    assert m["outputs"][0]["shape"] == [1, 1000]
    assert m["sha256"] == sha256_file(rec["path"])


@pytest.mark.slow
@pytest.mark.export
def test_stock_int8_tflite_of_mobilenet_is_cut_at_every_hardswish(tmp_path):
    # The contrast that makes the rewrites worth having: without them LiteRT's XNNPACK delegate
    # leaves every int8 HARD_SWISH to the reference kernels and the graph falls apart in pieces.
    from edge_se.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["export", "mobilenetv3_small_100", "--format", "tflite", "--dtype", "int8", "--out",
                   str(tmp_path), "--resolution", str(RESOLUTION), "--calib", "random", "--int8-rewrites", "none"])
    assert rc == 0
    m = read_manifest(tmp_path / artifact_name("mobilenetv3_small_100", "tflite", "int8"))
    assert m["quantization"]["int8_rewrites"] == []
    assert m["partitions"]["partitions"] > 1 and "HARD_SWISH" in m["partitions"]["ops_outside_delegate"]


def test_bad_int8_rewrites_flag_is_one_line_error(capsys):
    from edge_se.cli import main

    assert main(["export", "mobilenetv3_small_100", "--dtype", "int8", "--out", "x", "--int8-rewrites",
                 "swish"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--int8-rewrites" in err[0] and "unknown int8 rewrite 'swish'" in err[0], err


@pytest.mark.slow
@pytest.mark.export
def test_int8_pte_delegation_leaves_only_se_or_constants_outside():
    # Reads the cached mobilenet export (made by the slow tests above, or now).
    m = read_manifest(_record("mobilenetv3_small_100", "pte", "int8")["path"])
    outside = m["delegation"]["non_delegated_ops"]
    assert set(outside) == {"se", "constant", "other"}
    assert outside["other"] == {}


@pytest.mark.slow
@pytest.mark.export
def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    from export.backends import pte as pte_mod

    model = __import__("edge_se").build_model("mobilenetv3_small_050").eval()
    real_run = pte_mod.run_pte

    def broken_run(data, inputs):  # the runtime answers, but wrongly (a lowering bug)
        return [y + 0.5 * np.abs(y).max() for y in real_run(data, inputs)]

    monkeypatch.setattr(pte_mod, "run_pte", broken_run)
    with pytest.raises(ParityFailure) as info:
        export_one(model, name="mobilenetv3_small_050", fmt="pte", dtype="fp32", out_dir=tmp_path,
                   opts=ExportOptions(resolution=32))
    assert info.value.record["parity"]["passed"] is False
    assert info.value.record["parity"]["max_rel_error"] > par.FP32_RTOL
    assert list(tmp_path.iterdir()) == []  # no artifact, no manifest, no temporary file


def test_parity_inputs_are_seeded_and_include_real_images():
    a, real_a = parity_inputs(32, None, seed=3)
    b, _ = parity_inputs(32, None, seed=3)
    assert len(a) == 4 and not any(real_a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    images = torch.rand(10, 3, 32, 32)
    calib = Calibration("digits", [images[:8]], real=True, held_out=images[8:])
    xs, real = parity_inputs(32, calib, seed=0)
    assert real.count(True) == 2 and xs[-1].shape == (1, 3, 32, 32)
    assert np.array_equal(xs[-1][0], images[9].numpy())


def test_fp32_parity_rule():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((1, 10)).astype(np.float32) for _ in range(3)]
    close = [r + 1e-6 for r in ref]
    assert par.fp32_parity(close, ref)["passed"] is True
    far = [r + 0.1 for r in ref]
    assert par.fp32_parity(far, ref)["passed"] is False
    # Relative to the reference scale: tiny logits with an equally tiny error still fail.
    tiny = [r * 1e-10 for r in ref]
    assert par.fp32_parity([t * 1.5 for t in tiny], tiny)["passed"] is False
    # With real images among the samples only they are gated: noise inputs far off (an
    # ill-conditioned network out of distribution) are reported, not failed; without real images
    # the same figures fail.
    mixed = [ref[0] + 1e-6, ref[1] + 5.0, ref[2] + 5.0]
    gated = par.fp32_parity(mixed, ref, real_images=[True, False, False])
    assert gated["passed"] is True and gated["max_rel_error_all_samples"] > 0.5
    assert par.fp32_parity(mixed, ref, real_images=[False, False, False])["passed"] is False


def test_int8_parity_rule_catches_a_broken_artifact():
    rng = np.random.default_rng(1)
    flt = [rng.standard_normal((1, 100)) for _ in range(4)]
    qref = [f + 0.02 * rng.standard_normal((1, 100)) for f in flt]
    good = [q + 0.02 * rng.standard_normal((1, 100)) for q in qref]
    ok = par.int8_parity(good, qref, flt, output_scale=0.02, real_images=[False] * 4)
    assert ok["passed"] is True, ok
    assert 0.5 < ok["vs_quantized"]["max_error_steps"] < 10
    broken = [rng.standard_normal((1, 100)) for _ in range(4)]
    bad = par.int8_parity(broken, qref, flt, output_scale=0.02, real_images=[True] * 4)
    assert bad["passed"] is False
    assert {"vs_quantized_cosine", "vs_float_sqnr"} <= set(bad["failed_checks"])


def test_sqnr_and_cosine_values():
    ref = [np.array([3.0, 4.0])]
    assert par.sqnr_db(ref, ref) == math.inf
    assert par.sqnr_db([np.array([3.0, 4.5])], ref) == pytest.approx(10 * math.log10(25 / 0.25))
    assert par.cosine([np.array([-3.0, -4.0])], ref) == pytest.approx(-1.0)


def test_artifact_name_rejects_unknown_choices():
    assert artifact_name("efficientnet_b0", "pte", "int8") == "efficientnet_b0_xnnpack_int8.pte"
    assert artifact_name("efficientnet_b0", "tflite", "fp32") == "efficientnet_b0_litert_fp32.tflite"
    with pytest.raises(ContractError, match="valid: pte, tflite"):
        artifact_name("m", "onnx", "fp32")
    with pytest.raises(ContractError, match="valid: fp32, int8"):
        artifact_name("m", "pte", "fp16")
