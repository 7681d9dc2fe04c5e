"""Quantise once, ship what was measured: the policy's calibration subset reaches the artifact, the
manifest's fidelity is measured on the artifact in its runtime, and ``verify`` re-measures it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract.manifest import read_manifest
from edge_se.errors import EdgeSeError
from export import fidelity
from export.pipeline import ExportOptions, export_one
from export.sources import prepare_model
from export.verify import verify_artifact
from quantize.calibration import load_calibration

RES = 32  # pixels: the smallest side every family takes; keeps two int8 exports under a minute
CALIB = 16  # images selected from the 1,437-image digits pool: small enough that policies differ


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The same network exported to int8 .tflite under two policies that select differently."""
    import torch

    from edge_se.data import load_images
    from edge_se.registry import build_model
    from edge_se.train import init_linear_layers, save_weights, train

    # A trained network (3 epochs on the digits, about a minute): a random one at 32 px is so
    # ill-conditioned that its int8 twin fails parity, and fidelity says nothing about it.
    torch.manual_seed(0)
    net = build_model("mobilenetv3_small_050", num_classes=10)
    init_linear_layers(net)
    train(net, load_images("digits", RES, split="train"), epochs=3, seed=0, log=lambda _: None)
    wfile = save_weights(tmp_path_factory.mktemp("w") / "w.pt", net, model_name="mobilenetv3_small_050",
                         num_classes=10, resolution=RES)
    cal = load_calibration("digits", RES, samples=CALIB)
    model, weights = prepare_model("mobilenetv3_small_050", weights=str(wfile), calib=cal, resolution=RES)
    out = {}
    for policy in ("ptq", "gate-coverage"):
        folder = tmp_path_factory.mktemp(policy)
        rec = export_one(model, name="mobilenetv3_small_050", fmt="tflite", dtype="int8", out_dir=folder,
                         opts=ExportOptions(resolution=RES, policy=(policy,)), calib=cal, weights=weights)
        out[policy] = rec
    return out


@pytest.mark.slow
@pytest.mark.export
def test_the_policys_calibration_subset_reaches_the_artifact(exported):
    a, b = (read_manifest(exported[p]["path"]) for p in ("ptq", "gate-coverage"))
    ca, cb = a["calibration"], b["calibration"]
    assert (ca["selection"], cb["selection"]) == ("random", "gate-coverage")
    assert ca["size"] == cb["size"] == CALIB and len(ca["indices"]) == len(cb["indices"]) == CALIB
    assert ca["pool"] == 1437 and all(0 <= i < ca["pool"] for i in ca["indices"] + cb["indices"])
    assert ca["indices"] != cb["indices"], "two policies, two calibration subsets"
    assert a["sha256"] != b["sha256"], "... and two different artifacts"
    assert ca["policy"] == ["ptq"] and cb["policy"] == ["gate-coverage"]


@pytest.mark.slow
@pytest.mark.export
def test_the_manifests_fidelity_is_the_artifacts_own_and_verify_re_measures_it(exported, tmp_path):
    rec = exported["ptq"]
    fid = read_manifest(rec["path"])["fidelity"]
    assert fid["images"] == fidelity.FIDELITY_IMAGES and fid["source"] == "digits" and fid["split"] == "test"
    assert 0.0 <= fid["top1_agreement"] <= 1.0 and fid["gate_sqnr_db_min"] is not None
    assert fid["sqnr_db_worst"] <= fid["sqnr_db_median"]
    result = verify_artifact(rec["path"])
    assert result["fidelity"]["passed"], result["fidelity"]
    # The same bytes on the same images in the same runtime: identical figures (tolerance: 0.01 dB).
    assert result["fidelity"]["figures"]["sqnr_db"] == pytest.approx(fid["sqnr_db"], abs=0.01)

    # A manifest claiming better fidelity than the artifact has is caught.
    import shutil
    from pathlib import Path

    src = Path(rec["path"])
    for f in src.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    manifest_path = tmp_path / (src.name + ".json")
    doc = json.loads(manifest_path.read_text())
    doc["fidelity"]["sqnr_db"] += 3.0
    manifest_path.write_text(json.dumps(doc))
    forged = verify_artifact(tmp_path / src.name)
    assert forged["fidelity"]["passed"] is False and forged["fidelity"]["abs_diff"]["sqnr_db"] == pytest.approx(3.0)


def test_fidelity_figures_and_the_remeasure_rule():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 10)).astype(np.float32)
    labels = ref.argmax(1)
    same = fidelity.figures(ref, ref.copy(), labels)
    assert same["top1_agreement"] == 1.0 and same["accuracy"] == same["float_accuracy"] == 1.0
    noisy = fidelity.figures(ref, ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32), labels)
    assert 15 < noisy["sqnr_db"] < 25  # noise at 1/10 of the signal's std: 20 dB
    assert fidelity.compare(noisy, dict(noisy))["passed"]
    moved = dict(noisy, sqnr_db=noisy["sqnr_db"] + 0.02)
    assert not fidelity.compare(noisy, moved)["passed"], "0.02 dB is beyond the 0.01 dB tolerance"


def test_an_unknown_calibration_source_is_one_line():
    with pytest.raises(EdgeSeError, match=r"unknown calibration source 'imagenet'; valid: digits, textures"):
        load_calibration("imagenet", RES)
