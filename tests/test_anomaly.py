"""The SE-gate OOD score: closed-form distances, the metrics, the stats file, the CLI and a small end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from device_bench.gate_score import STATS_SCHEMA, block_distance, flag, score
from edge_se.cli import main
from studies.anomaly import auroc, fit, fpr_at_tpr, max_softmax_score

# Tolerances (here, not in tests/tolerances.py, which this piece does not own):
# Hand-built stats: the same float64 algebra in two orders; 1e-9 relative is ~1e7 ULPs of room.
EXACT_RTOL = 1e-9
# Fitted on N = 20,000 Gaussian samples in 4 dims: the sample covariance's relative error is
# ~sqrt(2/N) = 1% per entry; Ledoit-Wolf shrinkage at this N is < 0.1%. 4% is ~4 sd.
FITTED_RTOL = 0.04
# AUROC of 4,000 vs 4,000 samples: standard error ~ 0.006 at AUROC 0.76 (Hanley & McNeil); 0.025 ~ 4 sd.
AUROC_ATOL = 0.025
# The stats are rounded to 8 significant digits inside fit(), so JSON (repr floats) changes nothing.
ROUND_TRIP_ATOL = 0.0


def _ppca_block(mean: np.ndarray, vec: np.ndarray, lam: np.ndarray, residual: float) -> dict:
    return {"name": "se", "channels": len(mean), "mean": mean.tolist(), "components": vec.tolist(),
            "eigenvalues": lam.tolist(), "residual_variance": residual, "norm_mean": 0.0, "norm_std": 1.0}


def _random_cov(c: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(c, c))
    return a @ a.T + 0.5 * np.eye(c)


def test_full_rank_distance_equals_closed_form():
    rng = np.random.default_rng(1)
    c = 5
    mean, cov = rng.normal(size=c), _random_cov(c, rng)
    lam, vec = np.linalg.eigh(cov)
    block = _ppca_block(mean, vec, lam, 1.0)
    x = rng.normal(size=(7, c)) * 3
    r = x - mean
    want = np.sqrt(np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r))
    got = block_distance(x, block)
    np.testing.assert_allclose(got, want, rtol=EXACT_RTOL, err_msg=f"max abs err {np.abs(got - want).max():.3g}")


def test_ppca_distance_equals_mahalanobis_of_the_ppca_covariance():
    rng = np.random.default_rng(2)
    c, k, sigma2 = 8, 3, 0.2
    mean = rng.normal(size=c)
    vec = np.linalg.qr(rng.normal(size=(c, k)))[0]
    lam = np.array([5.0, 2.0, 1.0])
    cov = vec @ np.diag(lam) @ vec.T + sigma2 * (np.eye(c) - vec @ vec.T)
    block = _ppca_block(mean, vec, lam, sigma2)
    x = rng.normal(size=(6, c))
    r = x - mean
    want = np.sqrt(np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r))
    np.testing.assert_allclose(block_distance(x, block), want, rtol=EXACT_RTOL)
    # [N, C, 1, 1] gates are flattened
    np.testing.assert_allclose(block_distance(x[:, :, None, None], block), want, rtol=EXACT_RTOL)


def test_fitted_distance_matches_the_true_covariance():
    rng = np.random.default_rng(3)
    c = 4
    mean, cov = rng.uniform(0.2, 0.8, size=c), _random_cov(c, rng) * 0.01
    gates = rng.multivariate_normal(mean, cov, size=20_000)
    stats = fit({"se": gates}, components=c)
    points = mean + np.array([[0.1, 0, 0, 0], [0, -0.2, 0.1, 0], [0.05, 0.05, 0.05, 0.05]])
    r = points - mean
    want = np.sqrt(np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r))
    got = block_distance(points, stats["blocks"][0])
    np.testing.assert_allclose(got, want, rtol=FITTED_RTOL, err_msg=f"max abs err {np.abs(got - want).max():.3g}")


def test_threshold_flags_about_fpr_of_new_in_distribution_images():
    rng = np.random.default_rng(4)
    cov = _random_cov(6, rng) * 0.01
    draw = lambda n: {"a": rng.multivariate_normal(np.zeros(6), cov, size=n),  # noqa: E731
                      "b": rng.normal(size=(n, 3))}
    stats = fit(draw(5000), fpr=0.1)
    fresh = draw(5000)
    rate = flag(score([fresh["a"], fresh["b"]], stats), stats).mean()
    # the calibration part has 1,000 images: the 0.9 quantile's realised rate has sd ~0.01
    assert abs(rate - 0.1) < 0.03, rate


def test_separated_gates_give_a_high_auroc_and_shifted_normals_the_analytic_one():
    rng = np.random.default_rng(5)
    d = 1.0
    a, b = rng.normal(size=4000), rng.normal(loc=d, size=4000)
    want = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))  # P(B > A) = Phi(d / sqrt(2))
    assert abs(auroc(a, b) - want) < AUROC_ATOL, (auroc(a, b), want)
    stats = fit({"se": rng.normal(0.5, 0.05, size=(2000, 8))})
    id_s = score([rng.normal(0.5, 0.05, size=(500, 8))], stats)
    ood_s = score([rng.normal(0.5, 0.05, size=(500, 8)) + 0.1], stats)  # shifted by 2 sd per channel
    assert auroc(id_s, ood_s) > 0.99


def test_auroc_hand_cases():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5
    assert auroc([0, 1], [1, 2]) == 0.875  # 3 wins and one tie out of 4 pairs


def test_auroc_agrees_with_sklearn_on_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 5, size=300), rng.integers(1, 6, size=200)
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert abs(auroc(a, b) - want) < 1e-12


def test_fpr_at_tpr_hand_cases():
    assert fpr_at_tpr([0, 1, 2], [3, 4]) == 0.0
    assert fpr_at_tpr([3, 4], [0, 1, 2]) == 1.0
    assert fpr_at_tpr([0, 1, 2, 3], [2, 4], tpr=0.5) == 0.0  # threshold 4
    assert fpr_at_tpr([0, 1, 2, 3], [2, 4], tpr=1.0) == 0.5  # threshold 2 flags the tied 2 and the 3
    ood = np.arange(100.0)
    assert fpr_at_tpr(np.arange(100.0), ood, tpr=0.95) == 0.95  # threshold 5: ids 5..99


def test_max_softmax_score():
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = max_softmax_score(logits)
    np.testing.assert_allclose(got, [1 - 1 / (1 + 2 * math.exp(-10)), 2 / 3], rtol=1e-12)


def test_score_from_json_round_trip_equals_in_memory():
    rng = np.random.default_rng(7)
    gates = {"a": rng.uniform(size=(300, 12)), "b": rng.uniform(size=(300, 40))}
    stats = fit(gates, components=8)
    loaded = json.loads(json.dumps(stats))
    probe = [rng.uniform(size=(20, 12)), rng.uniform(size=(20, 40))]
    np.testing.assert_allclose(score(probe, loaded), score(probe, stats), atol=ROUND_TRIP_ATOL, rtol=0)
    assert loaded["schema"] == STATS_SCHEMA and loaded["fit_images"] == 240


@pytest.mark.parametrize(("n", "c"), [(50, 2), (300, 40), (1100, 576), (20, 100)])
def test_numpy_ledoit_wolf_equals_sklearn(n, c):
    from sklearn.covariance import ledoit_wolf as sklearn_lw

    from device_bench.gate_fit import ledoit_wolf

    rng = np.random.default_rng(n + c)
    x = rng.normal(size=(n, c)) * rng.uniform(0.01, 1.0, size=c)  # unequal variances: shrinkage in (0, 1)
    x -= x.mean(axis=0)
    want_cov, want_s = sklearn_lw(x, assume_centered=True)
    cov, s = ledoit_wolf(x)
    # The same closed form; sklearn sums its blocks in another order: float64 rounding only.
    assert s == pytest.approx(want_s, rel=EXACT_RTOL) and 0.0 < s < 1.0
    np.testing.assert_allclose(cov, want_cov, rtol=EXACT_RTOL, atol=EXACT_RTOL * np.abs(want_cov).max())


def test_max_z_takes_the_most_surprised_block_and_sum_z_adds_them():
    rng = np.random.default_rng(11)
    blocks = [{**_ppca_block(np.zeros(3), np.eye(3), np.ones(3), 1.0), "name": "a", "norm_mean": 1.0, "norm_std": 2.0},
              {**_ppca_block(np.zeros(2), np.eye(2), np.ones(2), 1.0), "name": "b", "norm_mean": 0.5, "norm_std": 0.5}]
    stats = {"schema": STATS_SCHEMA, "method": "ppca-mahalanobis", "combine": "max-z", "threshold": 0.0,
             "blocks": blocks}
    ga, gb = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    za = (np.linalg.norm(ga, axis=1) - 1.0) / 2.0  # identity covariance: the distance is the norm
    zb = (np.linalg.norm(gb, axis=1) - 0.5) / 0.5
    np.testing.assert_allclose(score([ga, gb], stats), np.maximum(za, zb), rtol=EXACT_RTOL, atol=1e-12)
    np.testing.assert_allclose(score([ga, gb], {**stats, "combine": "sum-z"}), za + zb, rtol=EXACT_RTOL, atol=1e-12)
    with pytest.raises(ValueError, match="unknown gate-stats combine 'mean-z'"):
        score([ga, gb], {**stats, "combine": "mean-z"})
    # fit() records the combination it calibrated the threshold with (max-z unless told).
    gates = {"a": rng.normal(size=(200, 3)), "b": rng.normal(size=(200, 2))}
    assert fit(gates)["combine"] == "max-z" and fit(gates, combine="sum-z")["combine"] == "sum-z"
    with pytest.raises(ValueError, match="unknown combine"):
        fit(gates, combine="mean-z")


def test_gap_interval_is_zero_for_identical_scores_and_covers_a_known_gap():
    from studies.anomaly_device import gap_ci

    rng = np.random.default_rng(2)
    f_id, f_ood = rng.normal(0, 1, 300), rng.normal(1.5, 1, 200)
    assert gap_ci(f_id, f_ood, f_id.copy(), f_ood.copy(), resamples=200) == (0.0, 0.0)  # paired: no spread
    # The device's OOD scores pulled towards the in-distribution ones: a real, negative gap.
    d_ood = f_ood - 0.8
    lo, hi = gap_ci(f_id, f_ood, f_id, d_ood, resamples=400)
    gap = auroc(f_id, d_ood) - auroc(f_id, f_ood)
    assert lo <= gap <= hi < 0.0


def test_device_study_verdicts_per_policy_and_the_repeat_noise_floor():
    """render(): targets judged per (layout, int8 policy) and per statistics; byte-identical repeats listed."""
    from studies.anomaly_device import render

    env = {"model": "m", "data": "digits", "resolution": 32, "epochs": 1, "seed": 0, "init": "recipe",
           "commit": "c", "versions": {}, "cpu": "X; flags: avx2"}

    def lat(policy, cost, gated="g1", fmt="pte", runner="native"):
        return {**env, "kind": "latency", "format": fmt, "dtype": "int8", "latency_resolution": 32,
                "layout": "concat", "policy": policy, "runner": runner, "outputs": 2, "plain_p50_ms": 1.0,
                "gated_p50_ms": 1.0 + cost, "cost": cost, "cost_q1": cost, "cost_q3": cost, "blocks": 3, "runs": 5,
                "plain_sha256": "p", "gated_sha256": gated}

    def auc(policy, on, gap):
        return {**env, "kind": "auroc", "format": "pte", "dtype": "int8", "ood": "blurred", "policy": policy,
                "stats_fitted_on": on, "combine": "max-z", "fitted_combine": True, "float_auroc": 0.9,
                "device_auroc": 0.9 + gap, "gap": gap, "gap_ci95": [gap, gap]}

    fid = {**env, "kind": "fidelity", "format": "pte", "dtype": "int8", "policy": "ptq", "layout": None,
           "sqnr_db": 25.0, "sqnr_db_worst": 8.0, "top1_agreement": 1.0, "accuracy": 0.97, "float_accuracy": 0.97,
           "gate_sqnr_db_min": 30.0, "images": 360, "artifact_sha256": "ab" * 32}
    md = render([lat("ptq", 0.04), lat("gate-fixed", 0.02, gated="g2"), lat("ptq", 0.01, "t", "tflite", "python"),
                 lat("gate-fixed", 0.025, "t", "tflite", "python"), fid,
                 auc("ptq", "float model", 0.014), auc("ptq", "artifact (--gate-fit)", -0.009)])
    # ptq: the pte's +4% fails; gate-fixed: its own pte (+2%) and the shared tflite (+2.5%) pass.
    assert "`concat` (the default), int8 `ptq`: NOT met (worst +4.00%, pte int8 at 32 px)" in md
    assert "`concat` (the default), int8 `gate-fixed`: met (worst +2.50%, tflite int8 at 32 px)" in md
    assert "- tflite int8 32 px, python runner: +1.00% (concat, ptq), +2.50% (concat, gate-fixed)" in md
    assert "native runner: +4.00%" not in md, "different gated bytes are no repeat"
    assert "`ptq`, statistics of the float model: NOT met (worst |gap| 0.0140" in md
    assert "`ptq`, statistics of the artifact (--gate-fit): met (worst |gap| 0.0090" in md
    assert "abababababab" in md  # the fidelity table names the artifact it measured


def test_gate_arrays_read_concatenated_and_separate_layouts():
    from device_bench.gate_score import gate_arrays

    rng = np.random.default_rng(3)
    a, b = rng.uniform(size=(1, 3, 1, 1)), rng.uniform(size=(1, 5, 1, 1))
    logits = rng.normal(size=(1, 10))
    concat = gate_arrays([logits, np.concatenate([a, b], axis=1)],
                         [{"name": "a", "channels": 3, "output_index": 1, "offset": 0},
                          {"name": "b", "channels": 5, "output_index": 1, "offset": 3}])
    separate = gate_arrays([logits, a, b], [{"name": "a", "channels": 3, "output_index": 1},
                                             {"name": "b", "channels": 5, "output_index": 2}])
    for got in (concat, separate):
        assert list(got) == ["a", "b"]
        assert np.array_equal(got["a"], a.reshape(1, 3)) and np.array_equal(got["b"], b.reshape(1, 5))
    q = np.array([[[[10]], [[-5]]]], dtype=np.int8)  # an int8 output with its scale and zero point
    got = gate_arrays([logits, q], [{"name": "g", "channels": 2, "output_index": 1}], quant=[(None, None), (0.5, -6)])
    assert got["g"].tolist() == [[8.0, 0.5]]
    with pytest.raises(ValueError, match="outside output 1"):
        gate_arrays([logits, a], [{"name": "a", "channels": 3, "output_index": 1, "offset": 1}])
    with pytest.raises(ValueError, match="no output 2"):
        gate_arrays([logits, a], [{"name": "a", "channels": 3, "output_index": 2}])


def test_gate_score_imports_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['edge_se'] = None\n"
        "import numpy as np\n"
        "from device_bench import gate_score\n"
        "s = {'schema': gate_score.STATS_SCHEMA, 'method': 'ppca-mahalanobis', 'combine': 'sum-z',\n"
        "     'threshold': 1.0, 'blocks': [{'name': 'se', 'channels': 2, 'mean': [0, 0],\n"
        "     'components': [[1.0], [0.0]], 'eigenvalues': [4.0], 'residual_variance': 1.0,\n"
        "     'norm_mean': 0.0, 'norm_std': 1.0}]}\n"
        "print(gate_score.score([np.array([[2.0, 0.0], [0.0, 3.0]])], s).tolist())\n"
        "from device_bench import gate_fit\n"  # the fit runs there too (on an artifact's gates)
        "fitted = gate_fit.fit({'se': np.random.default_rng(0).normal(size=(100, 3))})\n"
        "assert fitted['schema'] == gate_score.STATS_SCHEMA\n"
        "loaded = {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "assert not {'torch', 'sklearn', 'scipy'} & loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 3.0]"


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    return err


SCORE = ["anomaly", "score", "mobilenetv3_small_100", "--resolution", "16", "--images", "4"]


def test_missing_malformed_and_foreign_stats_are_one_line_errors(tmp_path, capsys):
    assert "not found" in _one_line_error([*SCORE, "--stats", str(tmp_path / "none.json")], capsys)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not JSON" in _one_line_error([*SCORE, "--stats", str(bad)], capsys)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "edge-se/weights/1"}))
    assert "schema" in _one_line_error([*SCORE, "--stats", str(other)], capsys)
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"schema": STATS_SCHEMA, "method": "ppca-mahalanobis", "combine": "sum-z",
                                   "threshold": 0, "blocks": [{"name": "x"}]}))
    assert "lacks" in _one_line_error([*SCORE, "--stats", str(lacking)], capsys)


def test_stats_of_another_layout_is_an_unfitted_model(tmp_path, capsys):
    stats = fit({"blocks.0.se": np.random.default_rng(8).uniform(size=(100, 3))})
    path = tmp_path / "s.json"
    path.write_text(json.dumps(stats))
    assert "unfitted model" in _one_line_error([*SCORE, "--stats", str(path)], capsys)
    path.write_text(json.dumps({**stats, "resolution": 32}))
    assert "fitted at 32 px" in _one_line_error([*SCORE, "--stats", str(path)], capsys)


def test_model_without_se_blocks_is_a_one_line_error(tmp_path, capsys):
    err = _one_line_error(["anomaly", "fit", "mobilenetv3_small_100_nose", "--resolution", "16",
                           "--out", str(tmp_path / "s.json")], capsys)
    assert "no SE blocks" in err
    assert not (tmp_path / "s.json").exists()


@pytest.mark.slow
def test_end_to_end_fit_and_score_on_a_tiny_trained_model(tmp_path, capsys):
    from edge_se.data import load_images
    from edge_se.registry import build_model
    from edge_se.train import save_weights, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_images("digits", 16, split="train")
    model = build_model("mobilenetv3_small_050", num_classes=10)
    train(model, data, epochs=2, seed=0)
    weights = tmp_path / "m.pt"
    save_weights(weights, model, model_name="mobilenetv3_small_050", num_classes=10, resolution=16, extra={})
    stats_path = tmp_path / "stats.json"
    assert main(["anomaly", "fit", "mobilenetv3_small_050", "--weights", str(weights),
                 "--out", str(stats_path)]) == 0
    capsys.readouterr()
    stats = json.loads(stats_path.read_text())
    assert stats["resolution"] == 16 and stats["model"] == "mobilenetv3_small_050"
    assert main(["anomaly", "score", "mobilenetv3_small_050", "--weights", str(weights), "--stats",
                 str(stats_path), "--images", "120", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["ood"]: r for r in out["rows"]}
    assert set(rows) == {"(in-distribution)", "uniform", "gaussian", "photos", "inverted", "noisy", "blurred"}
    for name, r in rows.items():
        if name != "(in-distribution)":
            assert 0.0 <= r["gate_auroc"] <= 1.0 and 0.0 <= r["msp_auroc"] <= 1.0
    # noise images are far from digits even for a 2-epoch network
    assert rows["uniform"]["gate_auroc"] > 0.9, rows["uniform"]
    # the held-out flag rate is near the fitted 5% (calibration on 287 training images)
    assert rows["(in-distribution)"]["gate_flagged"] < 0.2
