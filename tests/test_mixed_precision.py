"""``--policy float-sensitive`` (quantize.mixed_precision): the costliest int8 tensors kept fp32."""

from __future__ import annotations

import pytest
import torch

from edge_se.errors import EdgeSeError
from quantize import quantize_model
from quantize.diagnose import quantized_sites
from quantize.metrics import sqnr_db
from quantize.policies import DEFAULT_FLOAT_LAYERS, float_layers_for
from tests.test_diagnose import OutlierNet, _images

# OutlierNet calibrated with its detector firing, evaluated without: plain int8 rounds the second
# ReLU's tensor away (11-15 dB logits SQNR over runs of this test's seeds, test_diagnose says why);
# with that tensor fp32 every remaining grid fits its tensor (> 40 dB). 20 dB between them leaves
# room for either figure to move by the histogram observer's bins and still fails if the wrong
# tensor, or none, leaves the grid.
MIN_GAIN_DB = 20.0


@pytest.fixture(scope="module")
def outlier():
    torch.manual_seed(0)  # OutlierNet's Linear takes PyTorch's default init from the global RNG
    return OutlierNet().eval(), [_images(32, 1, detector=True)], _images(32, 2, detector=False)


@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_the_outlier_tensor_leaves_the_grid_and_nothing_takes_its_place(outlier, target):
    model, calib, held = outlier
    plain = quantize_model(model, (calib[0][:1],), calib, target=target)
    mixed = quantize_model(model, (calib[0][:1],), calib, target=target, policy="float-sensitive", float_layers=1)
    before = [s.name for s in quantized_sites(plain.graph)]
    after = [s.name for s in quantized_sites(mixed.graph)]
    record = mixed.float_layers
    assert record is not None and record["count"] == 1
    chosen = record["tensors"][0]["name"]
    relus = [n for n in before if n.startswith("relu")]
    assert chosen == relus[1], (chosen, before)  # the second ReLU: the tensor the 1e3 channel sets the grid of
    # Exactly that tensor left the grid: its producer (conv + ReLU, one pattern) and its reader are
    # fp32, so the convolution's output did not become a quantised tensor in its place.
    assert after == [n for n in before if n != chosen], (before, after)
    assert set(record["fp32_nodes"]) >= {chosen}
    assert any("float-sensitive: 1 int8 tensors kept fp32" in r for r in mixed.rewrites)
    with torch.no_grad():
        ref = model(held)
        gain = float(sqnr_db(ref, mixed.graph(held))) - float(sqnr_db(ref, plain.graph(held)))
    assert gain >= MIN_GAIN_DB, gain


def test_count_belongs_to_the_policy():
    assert float_layers_for("ptq", None) is None
    assert float_layers_for("float-sensitive", None) == DEFAULT_FLOAT_LAYERS
    assert float_layers_for("act-outlier,float-sensitive", 2) == 2
    with pytest.raises(EdgeSeError, match="needs --policy float-sensitive"):
        float_layers_for("ptq", 2)
    with pytest.raises(EdgeSeError, match="bad --float-layers 0"):
        float_layers_for("float-sensitive", 0)


def test_more_tensors_than_the_graph_quantises_is_one_line_error(outlier):
    model, calib, _ = outlier
    with pytest.raises(EdgeSeError, match=r"bad --float-layers 99: .* quantises \d+ tensors"):
        quantize_model(model, (calib[0][:1],), calib, target="pte", policy="float-sensitive", float_layers=99)


def test_cli_without_the_policy_is_one_line_error(capsys, tmp_path):
    from edge_se.cli import main

    assert main(["export", "mobilenetv3_small_050", "--dtype", "int8", "--float-layers", "2", "--calib", "random",
                 "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())  # refused before any work
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("W")]
    assert len(err) == 1 and "needs --policy float-sensitive" in err[0], err


class OutlierSENet(OutlierNet):
    """OutlierNet with an SE block after its third layer: ``auto`` needs SE blocks to search."""

    def __init__(self) -> None:
        super().__init__()
        import edge_se

        self.se = edge_se.SqueezeExcite(8, 4, act="relu", gate="sigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = self.se(torch.relu(self.c3(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def outlier_se():
    torch.manual_seed(0)
    return OutlierSENet().eval()


def _mixed_pool() -> torch.Tensor:
    """8 images that fire OutlierNet's detector among 56 that do not: the grid the 8 set crushes the 56."""
    return torch.cat([_images(56, 3, detector=True), _images(8, 4, detector=False)])


class _Probe:
    """A latency probe that reports a fixed ratio and remembers what it was asked to compare."""

    def __init__(self, ratio: float) -> None:
        self.ratio, self.calls = ratio, []

    def __call__(self, plain, candidate) -> float:
        self.calls.append((plain, candidate))
        return self.ratio


@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_auto_keeps_an_fp32_tensor_only_within_the_latency_budget(outlier_se, ratio, monkeypatch):
    import quantize.core

    # Stage 1 reduced to plain ptq: this test is about the islands of stages 2-3 and their budget
    # (stage 1's recipes have their own tests), and the full stage 1 would take 5x the time.
    monkeypatch.setattr(quantize.core, "AUTO_RECIPES", ("ptq",))
    model = outlier_se
    pool = _mixed_pool()
    probe = _Probe(ratio)
    qm = quantize_model(model, (pool[:1],), [pool], target="pte", policy="auto", latency_probe=probe)
    assert probe.calls, "stage 3 never measured a candidate: the targets were met without it?"
    plains = {id(p.graph) for p, _ in probe.calls}
    assert len(plains) == 1  # every candidate (SE block or tensor) against the same plain int8 graph
    tried = [s for s in qm.steps if s["float_tensors"]]
    assert tried and all(s["latency_ratio"] == ratio for s in tried)
    assert qm.latency_budget_pct == 5.0
    if ratio <= 1.05:
        assert tried[0].get("accepted") and qm.float_layers is not None
        assert qm.float_layers["tensors"][0]["name"] == tried[0]["float_tensors"][0]
    else:
        assert "over the 5% budget" in tried[0]["rejected"] and len(tried) == 1
        assert qm.float_layers is None  # nothing kept: the artifact is plain int8's graph
        assert id(qm.graph) in plains


def test_latency_budget_belongs_to_auto_and_is_positive():
    from quantize.policies import check_latency_budget

    assert check_latency_budget("auto", None) is None and check_latency_budget("auto", 2.5) == 2.5
    with pytest.raises(EdgeSeError, match="needs --policy auto"):
        check_latency_budget("ptq", 5.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(EdgeSeError, match="bad --latency-budget-pct"):
            check_latency_budget("auto", bad)


def test_ratio_of_rounds_is_the_median_round_ratio():
    from export.latency_probe import ratio_of_rounds

    # One disturbed round (the candidate's 4.0 ms) moves the median of ratios by nothing.
    assert ratio_of_rounds([2.0, 2.0, 2.0], [2.2, 4.0, 2.1]) == pytest.approx(1.1)
    with pytest.raises(EdgeSeError):
        ratio_of_rounds([1.0], [1.0, 1.0])


@pytest.mark.export
def test_latency_probe_times_two_artifacts_in_their_runtime(outlier):
    """The real probe on the same graph twice: both lowered and run; their ratio near 1.

    A 16 px network runs in microseconds, where a shared 2-core machine's noise is a large fraction:
    [0.5, 2] only says the two were timed alike (a probe that timed one artifact twice as often,
    or lowered nothing, would be far outside).
    """
    from export import backends
    from export.latency_probe import ArtifactLatencyProbe

    model, calib, _ = outlier
    qm = quantize_model(model, (calib[0][:1],), calib, target="pte")
    probe = ArtifactLatencyProbe(backends.get("pte"), (calib[0][:1],), "NCHW", rounds=3, runs=5)
    assert 0.5 <= probe(qm, qm) <= 2.0


@pytest.mark.parametrize("policy", [("auto",), ("ptq",)])
def test_export_hands_auto_a_latency_probe_of_its_format(monkeypatch, policy):
    """The wiring, not the search: ``edge-se export``'s quantisation step gives ``auto`` (only) a probe."""
    import export.pipeline as pl
    import quantize
    from export.latency_probe import ArtifactLatencyProbe
    from quantize.calibration import Calibration

    seen = {}
    monkeypatch.setattr(quantize, "quantize_model", lambda *a, **kw: seen.update(kw) or "quantised")
    calib = Calibration(source="random", batches=[torch.zeros(2, 3, 16, 16)], real=False)
    opts = pl.ExportOptions(resolution=16, policy=policy, latency_budget_pct=2.5 if policy == ("auto",) else None)
    assert pl._quantize(torch.nn.Identity(), "tflite", (torch.zeros(1, 3, 16, 16),), calib, opts) == "quantised"
    if policy == ("auto",):
        probe = seen["latency_probe"]
        assert isinstance(probe, ArtifactLatencyProbe) and probe.backend.name == "tflite"
        assert seen["latency_budget_pct"] == 2.5
    else:
        assert seen["latency_probe"] is None
