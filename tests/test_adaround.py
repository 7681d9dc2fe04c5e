"""quantize.adaround: learned rounding against a known answer, on a whole graph, and as a policy."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import edge_se
from edge_se.errors import EdgeSeError
from quantize import quantize_model, resolve_policy
from quantize.adaround import AdaRoundConfig, adaround, learn_rounding, record, rounded_layers, summary
from quantize.diagnose import float_graph
from quantize.se_pattern import getattr_path
from tests.nets import with_data_statistics

RES = 32  # pixels: the smallest side every family accepts
FAST = AdaRoundConfig(iterations=100)  # enough for most rounding variables to settle on these small layers


def test_learned_rounding_beats_nearest_where_every_weight_rounds_down():
    # One output unit reading 9 inputs near 1: each weight sits 0.3-0.45 of a step above a grid
    # point, so nearest rounding rounds all 9 down and the output falls 3.5 steps short. Rounding
    # 3 or 4 of them up instead leaves at most half a step: the known answer AdaRound must find.
    s = 0.01
    fracs = torch.tensor([0.35, 0.4, 0.45, 0.3, 0.42, 0.38, 0.44, 0.36, 0.41])
    ints = torch.tensor([3.0, -7, 12, 0, 25, -40, 8, 60, -2])
    w = torch.cat([(ints + fracs) * s, torch.tensor([127 * s])]).reshape(1, 10)  # the last weight sets the grid
    x = torch.cat([1 + 0.05 * torch.randn(64, 9, generator=torch.Generator().manual_seed(0)),
                   torch.zeros(64, 1)], dim=1)
    y = x @ w.T
    q, mse_nearest, mse_learned = learn_rounding(w, torch.tensor([s]), x, y, config=AdaRoundConfig(iterations=400))
    floor = torch.floor(w / s)
    assert bool(((q == floor) | (q == floor + 1)).all())  # only ever one grid point up or down
    assert mse_nearest == pytest.approx(float(fracs.sum() * s) ** 2, rel=0.1)  # 3.5 steps short, inputs ~1 +- 5%
    # at most about half a step off (0.5 s), inputs' 5% jitter allowed for
    assert mse_learned <= (0.6 * s) ** 2, (mse_learned, q - floor)
    assert 3 <= int((q - floor)[0, :9].sum()) <= 4


class SmallSE(nn.Module):
    """Stem, depthwise and pointwise convolutions, an SE block and a classifier: every layer kind AdaRound meets."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = edge_se.SqueezeExcite(16, 8, act="relu", gate="hsigmoid")
        self.pw = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pw(self.se(self.dw(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return with_data_statistics(SmallSE(), RES)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_adaround_changes_only_weight_integers_each_by_one_step_at_most(small_model, target):
    x = torch.randn(16, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    qm = quantize_model(small_model, (x[:1],), [x], target=target, policy="ptq")
    fg = float_graph(qm)
    layers = rounded_layers(qm.graph)
    assert len(layers) == 6 and all(lay.folded == (target == "pte") for lay in layers)  # every conv/linear
    names = [n.name for n in qm.graph.graph.nodes]
    scales = {lay.scale: getattr_path(qm.graph, lay.scale).clone() for lay in layers}
    before = {lay.weight: getattr_path(qm.graph, lay.weight).clone() for lay in layers}
    report = adaround(qm.graph, fg, x, config=FAST)
    assert [n.name for n in qm.graph.graph.nodes] == names  # the same graph, node for node
    assert all(torch.equal(getattr_path(qm.graph, p), v) for p, v in scales.items())  # the same grids
    if not report["kept"]:  # the logits moved away from float: every weight restored, exactly
        assert report["sqnr_db_after"] < report["sqnr_db_before"]
        assert all(torch.equal(getattr_path(qm.graph, p), v) for p, v in before.items())
        return
    assert report["sqnr_db_after"] >= report["sqnr_db_before"]
    fnodes = {n.name: n for n in fg.graph.nodes}
    changed = 0
    for lay, rec in zip(layers, report["layers"], strict=True):
        w = getattr_path(fg, str(fnodes[lay.node.name].args[1].target)).float()
        s = getattr_path(qm.graph, lay.scale).float().reshape((-1,) + (1,) * (w.ndim - 1))
        stored = getattr_path(qm.graph, lay.weight).float()
        if torch.equal(getattr_path(qm.graph, lay.weight), before[lay.weight]):
            continue
        changed += 1
        assert rec["mse_learned"] < rec["mse_nearest"], rec  # a layer changes only where it gains
        q = stored if target == "pte" else stored / s
        if target == "tflite":  # the float weight now sits on its grid: its quantize node gives back q exactly
            assert torch.allclose(q, q.round(), atol=1e-3)
        q = q.round()
        floor = torch.floor(w / s)
        assert bool((((q == floor) | (q == floor + 1)) | (q.abs() == 127)).all()), lay.node.name
    assert changed == report["kept_layers"] > len(layers) // 2


def test_adaround_policy_resolves_records_and_refuses_auto(small_model, monkeypatch):
    assert resolve_policy("adaround").adaround and not resolve_policy("ptq").adaround
    assert resolve_policy("act-outlier,adaround,bias-correction").bias_correction == "full"
    with pytest.raises(EdgeSeError, match="'auto' and 'adaround' do not combine"):
        resolve_policy("auto,adaround")
    monkeypatch.setattr("quantize.core.AdaRoundConfig", functools.partial(AdaRoundConfig, iterations=10))
    x = torch.randn(16, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    qm = quantize_model(small_model, (x[:1],), [x], target="pte", policy="adaround", calib_size=12, seed=3)
    rec = qm.adaround
    assert rec is not None and rec["images"] == 12 and rec["config"]["iterations"] == 10
    assert rec["config"]["seed"] == 3 and rec["layers"] == 6
    assert rec["checked_on"] == 4  # kept or undone on the 4 pool images it did not learn on
    assert any(line.startswith(("adaround: ", "adaround reverted: ")) for line in qm.rewrites)


def test_summary_says_kept_or_reverted():
    base = {"layers": [{"flipped": 0.1}, {"flipped": 0.3}], "kept_layers": 2, "sqnr_db_before": 10.0,
            "sqnr_db_after": 12.5, "checked_on": 9}
    kept = record({**base, "kept": True}, AdaRoundConfig(iterations=7), 5)
    assert summary(kept) == ("adaround: 2 of 2 layers take learned rounding (20.0% of their weights rounded the "
                             "other way on average; 7 steps per layer on 5 images); logits SQNR on 9 images it "
                             "did not learn on 10.0 -> 12.5 dB")
    reverted = record({**base, "kept": False, "sqnr_db_after": 9.0}, AdaRoundConfig(), 5)
    assert summary(reverted).startswith("adaround reverted: 2 of 2 layers would have changed")
