"""quantize: bias correction and outlier-aware activation ranges, each against a known answer."""

from __future__ import annotations

import pytest
import torch

import edge_se
from edge_se.errors import EdgeSeError
from edge_se.init import randomize_batchnorm
from quantize import quantize_model, resolve_policy
from quantize.bias_correction import THRESHOLDS, _channel_means, correct_biases, corrected_layers, summary
from quantize.diagnose import float_graph
from quantize.observers import OUTLIER_FACTOR, ImageOutlierObserver
from quantize.se_pattern import getattr_path

RES = 32  # pixels: the smallest side every family accepts


def _median_shift(qm, images: torch.Tensor, names: set[str]) -> dict[str, float]:
    """Per layer: max over channels of |median over images of (float - int8) channel mean| / mean |float mean|."""
    fg = float_graph(qm)
    fm = _channel_means(fg, names, images, 64)
    qmeans = _channel_means(qm.graph, names, images, 64)
    return {n: float((fm[n] - qmeans[n]).median(dim=0).values.abs().max() / (fm[n].mean(0).abs().mean() + 1e-12))
            for n in names}


@pytest.fixture(scope="module")
def small_model():
    return randomize_batchnorm(edge_se.build_model("mobilenetv3_small_050", num_classes=10))


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "target"), [("full", "pte"), ("fast", "tflite")])
def test_bias_correction_moves_each_corrected_layer_to_float_or_restores_everything(small_model, mode, target):
    x = torch.randn(16, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    qm = quantize_model(small_model, (x[:1],), [x], target=target, policy="ptq")
    layers = {n.name for n, _ in corrected_layers(qm.graph)}
    assert len(layers) > 40  # every conv/linear of MobileNetV3-Small
    before = _median_shift(qm, x, layers)
    biases = {p: getattr_path(qm.graph, p).clone() for _, p in corrected_layers(qm.graph)}
    names = [n.name for n in qm.graph.graph.nodes]
    report = correct_biases(qm.graph, float_graph(qm), x, mode=mode)
    # Without correction int8 shifts channel means by several percent of the layer's mean output.
    assert max(before.values()) > 0.05
    # Only bias constants may change: the same graph, node for node.
    assert [n.name for n in qm.graph.graph.nodes] == names
    corrected = {str(r["layer"]) for r in report["layers"]}
    if not report["kept"]:  # the logits moved away from float: every bias restored, exactly
        assert report["sqnr_db_after"] < report["sqnr_db_before"]
        assert all(torch.equal(getattr_path(qm.graph, p), b) for p, b in biases.items())
        return
    assert report["sqnr_db_after"] >= report["sqnr_db_before"] and corrected
    after = _median_shift(qm, x, corrected)
    first = corrected_layers(qm.graph)[0][0].name
    if mode == "full":
        # Each layer was corrected after every layer before it: its median shift is float rounding
        # (measured <= 1e-6; 1e-3 leaves room for float64 vs float32 sums).
        assert max(after.values()) < 1e-3, max(after.items(), key=lambda kv: kv[1])
    elif first in after:
        # fast: exact on the first layer only (nothing upstream of it was corrected).
        assert after[first] < 1e-3


def test_bias_correction_rejects_an_unknown_mode_and_summarises():
    with pytest.raises(ValueError, match="unknown bias-correction mode 'slow'"):
        correct_biases(None, None, torch.zeros(1), mode="slow")  # type: ignore[arg-type]
    assert THRESHOLDS == {"fast": 2.0, "full": 1000.0}  # NNCF's own
    reverted = {"layers": [{"layer": "c", "shift_rel": 0.1}], "skipped": 0, "sqnr_db_before": 20.0,
                "sqnr_db_after": 18.0, "kept": False}
    assert summary(reverted).startswith("bias correction reverted: 1 biases would have moved")
    kept = {**reverted, "sqnr_db_after": 21.0, "kept": True, "skipped": 2}
    assert summary(kept).startswith("1 biases corrected (2 skipped by the threshold); largest mean shift 10.0%")


def test_outlier_observer_leaves_outlier_images_out():
    obs = ImageOutlierObserver(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
    gen = torch.Generator().manual_seed(0)
    bulk = torch.rand(98, 8, 4, 4, generator=gen) * 2.0 - 1.0  # every value in [-1, 1)
    bulk[0, 0, 0, 0], bulk[1, 0, 0, 0] = 1.0, -1.0  # the bulk's extremes, exactly
    outliers = torch.full((2, 8, 4, 4), 100.0)  # two images at 100x (> OUTLIER_FACTOR x the median image)
    for batch in (bulk[:50], torch.cat([bulk[50:], outliers])):
        obs(batch)
    scale, zero_point = obs.calculate_qparams()
    # Known answer: the range is the bulk's [-1, 1], as min-max of the bulk alone would give.
    assert float(obs.min_val) == -1.0 and float(obs.max_val) == 1.0
    assert float(scale) == pytest.approx(2.0 / 255, rel=1e-6)
    # A min-max observer over the same batches covers the outliers: 50x coarser.
    assert 100.0 > OUTLIER_FACTOR * 1.0


def test_outlier_observer_keeps_everything_without_outliers():
    obs = ImageOutlierObserver(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
    x = torch.linspace(-3.0, 5.0, 64 * 10).reshape(64, 10)  # image maxima rise smoothly: none is an outlier
    obs(x)
    obs.calculate_qparams()
    assert (float(obs.min_val), float(obs.max_val)) == (-3.0, 5.0)


def test_new_policies_resolve_and_conflict():
    assert resolve_policy("act-outlier,bias-correction").act_observer == "outlier"
    assert resolve_policy("bias-correction-fast").bias_correction == "fast"
    with pytest.raises(EdgeSeError, match="both set the bias"):
        resolve_policy("bias-correction,bias-correction-fast")
    with pytest.raises(EdgeSeError, match="both set the observer"):
        resolve_policy("act-outlier,act-minmax")
    # auto's recipes reach the quantizer whole: observer, squeeze grid and bias correction.
    from quantize.core import AUTO_RECIPES, _with_recipe

    assert "se-squeeze-grid" in AUTO_RECIPES
    mixed = _with_recipe(resolve_policy("auto"), "se-squeeze-grid,bias-correction")
    assert (mixed.own_squeeze, mixed.bias_correction, mixed.act_observer) == (True, "full", "histogram")


def _step(recipe: str, agree: float, median: float, sqnr: float, worst: float = 0.0, gate: float = 30.0) -> dict:
    return {"recipe": recipe, "top1_agreement": agree, "sqnr_db_median": median, "sqnr_db": sqnr,
            "sqnr_db_worst": worst, "gate_sqnr_db_min": gate}


def test_auto_replaces_ptq_only_by_a_recipe_worse_on_no_figure():
    from quantize.bench import _auto_choice
    from quantize.core import AUTO_TOLERANCE_DB, _auto_score, _no_gain, _worse_than

    base = _step("ptq", 0.906, 9.0, 10.3)
    # The measured pattern on EfficientNet-B0 from the uniform classifier init (pte, 64 px): outlier
    # ranges lift agreement and the median image while the global SQNR (the 1-2% outlier images) falls.
    outlier = _step("act-outlier", 0.989, 20.8, 0.8)
    assert _worse_than(outlier, base) == "sqnr_db 10.3 -> 0.8 dB"
    # One image of agreement lost is a loss, whatever the SQNR gained.
    assert _worse_than(_step("x", 0.902, 12.0, 14.0), base).startswith("top-1 agreement")
    # Within the tolerance on every SQNR, better by >= 1 dB on the median: it beats ptq.
    corrected = _step("bias-correction", 0.906, 10.1, 10.3 - AUTO_TOLERANCE_DB / 2, worst=-AUTO_TOLERANCE_DB / 2)
    assert _worse_than(corrected, base) == "" and _no_gain(corrected, base) == ""
    # No figure worse, but nothing gained beyond noise: not worth a change either.
    same = _step("se-squeeze-grid", 0.906, 9.5, 10.6)
    assert _worse_than(same, base) == "" and _no_gain(same, base).startswith("gained under")
    # A worse gate is a loss too.
    assert _worse_than(_step("y", 0.95, 12.0, 14.0, gate=29.0), base) == "gate_sqnr_db_min 30.0 -> 29.0 dB"
    assert _auto_score(_step("a", 0.95, 9.0, 9.0)) > _auto_score(_step("b", 0.94, 30.0, 30.0))
    corrected["chosen"] = True
    steps = [base, outlier, corrected]
    assert _auto_choice({"auto_steps": steps}) == "bias-correction"
    islands = [{"float_blocks": ["b1"], "accepted": True}, {"float_blocks": ["b1", "b2"], "accepted": True},
               {"float_blocks": ["b1", "b2", "b3"], "rejected": "gained under 1.0 dB"}]
    assert _auto_choice({"auto_steps": [*steps, *islands]}) == "bias-correction + 2 SE blocks fp32"
    tuned = {"recipe": "bias-correction,qat", "float_blocks": ["b1", "b2"]}
    assert _auto_choice({"auto_steps": [*steps, *islands, {**tuned, "rejected": "x"}]}) == \
        "bias-correction + 2 SE blocks fp32"
    assert _auto_choice({"auto_steps": [*steps, *islands, {**tuned, "accepted": True}]}) == \
        "bias-correction + 2 SE blocks fp32 + qat"
    assert _auto_choice({"policy": "ptq"}) == ""


@pytest.mark.slow
def test_squeeze_grid_gives_the_se_squeeze_its_own_finer_grid():
    # The stock annotators share an average pool's grid with its input; the squeeze of a feature map
    # spanning [0, 8] then has a fraction of the levels its own range needs. Measured on timm's
    # EfficientNet-B0 (edge-se diagnose): squeezes 22-28 dB isolated with the shared grid, 28-50 own.
    import edge_se
    from quantize import quantize_model

    torch.manual_seed(0)
    model = edge_se.build_model("efficientnet_b0", num_classes=10)
    calib = torch.randn(16, 3, 32, 32)
    for m in model.modules():  # BatchNorm statistics of the data (one cumulative pass), as a trained net has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(calib)
    model.eval()

    def squeeze_scales(policy: str) -> list[tuple[float, float, int]]:
        """Per SE block: (the feature map's scale, the squeeze's scale, the map's H * W)."""
        qm = quantize_model(model, (calib[:1],), [calib], target="pte", policy=policy)
        nodes = {n.name: n for n in qm.graph.graph.nodes}
        float_nodes = {n.name: n for n in qm.reference.graph.nodes}
        out = []
        for block in qm.se_blocks:
            pool = nodes[block.pool]
            q_out = next(u for u in pool.users if "quantize_per_tensor" in str(u.target))
            dq_in = pool.args[0]
            shape = float_nodes[block.pool].args[0].meta["val"].shape
            out.append((float(dq_in.args[1]), float(q_out.args[1]), int(shape[2] * shape[3])))
        return out

    shared, own = squeeze_scales("ptq"), squeeze_scales("se-squeeze-grid")
    assert all(s_in == s_out for s_in, s_out, _ in shared), shared
    # Own grid: where the map has more than one pixel its mean spans a fraction of its range, so the
    # step is finer (at 32 px the last stages are 1x1: the mean is the map, and so is its grid).
    # On 4x4 maps and larger the means of random-ish features span well under half the map's range.
    assert len([hw for *_, hw in own if hw > 1]) >= 8, own
    assert all(s_out < s_in for s_in, s_out, hw in own if hw > 1), own
    assert all(s_out < 0.5 * s_in for s_in, s_out, hw in own if hw >= 16), own


def test_outlier_observer_shared_by_tensors_of_different_sizes_covers_each():
    # Under the int8 rewrites one observer can serve a feature map and its spatial mean (shared grid).
    # Measured before this was handled: the means' small peaks set the median, the feature map's
    # every image counted as an outlier, its range collapsed to 0.54 of 7.1 (iso SQNR 4 dB) and
    # EfficientNet-B0's int8 .pte lost 55 points of top-1 agreement.
    obs = ImageOutlierObserver(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
    fmap = torch.rand(32, 4, 8, 8) * 7.0
    fmap[0, 0, 0, 0] = 7.0
    for _ in range(3):  # the mean is observed more often than the map: its peaks would be the median
        obs(fmap.mean(dim=(2, 3), keepdim=True) * 0.1)
    obs(fmap)
    obs.calculate_qparams()
    assert float(obs.max_val) == pytest.approx(7.0)
