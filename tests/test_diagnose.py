"""``quantize.diagnose`` and ``edge-se diagnose``: per-layer accumulated and isolated int8 SQNR."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import edge_se
from edge_se.cli import main
from edge_se.init import randomize_batchnorm
from quantize.core import quantize_model
from quantize.diagnose import (
    SPLIT_MARGIN_DB,
    LayerFidelity,
    diagnose,
    diagnose_table,
    error_split,
    float_graph,
    plot_fidelity,
    worst,
)

KEYS = {"index", "name", "op", "se_block", "sqnr_db_accumulated", "sqnr_db_isolated"}
OUTLIER_GAIN = 1e3


class OutlierNet(nn.Module):
    """Three conv + ReLU layers; the second one's channel 0 is ``1e3 *`` a detector of ``x[:, 0] > 0.5``.

    Calibration images have ``x[:, 0]`` in [-1, 1], so that channel reaches ~500 and sets the
    second ReLU's int8 grid to a step of ~2. Held-out images have ``x[:, 0] <= 0``: the detector
    never fires, every value of that tensor is O(1) and rounds to 0 on that grid, so the error
    enters there (isolated SQNR a few dB) while every other grid fits its tensor (c3 ignores
    channel 0, so the outlier does not widen any later range).
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            for conv in (self.c1, self.c2, self.c3):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
            self.c1.bias.copy_(torch.rand(8, generator=g) * 0.2)
            self.c1.weight[0].zero_()
            self.c1.weight[0, 0, 1, 1] = 1.0  # c1[0] = relu(x0 - 0.5): fires only where x0 > 0.5
            self.c1.bias[0] = -0.5
            self.c2.bias.copy_(torch.rand(8, generator=g) * 0.2)
            self.c2.weight[0].zero_()
            self.c2.weight[0, 0, 1, 1] = OUTLIER_GAIN  # c2[0] = 1e3 * c1[0]
            self.c2.bias[0] = 0.0
            self.c3.weight[:, 0].zero_()  # the outlier stops here: c3's range is O(1) on calibration too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def _images(n: int, seed: int, *, detector: bool) -> torch.Tensor:
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    if not detector:
        x[:, 0] = -x[:, 0].abs()
    return x


def _outlier_layers(calib_fires: bool) -> list[LayerFidelity]:
    model = OutlierNet().eval()
    calib = [_images(32, 1, detector=calib_fires)]
    qm = quantize_model(model, (calib[0][:1],), calib, target="pte")
    return diagnose(qm, _images(32, 2, detector=False))


def _relus(layers: list[LayerFidelity]) -> list[LayerFidelity]:
    return [r for r in layers if r.op == "aten.relu.default"]


@pytest.mark.slow
def test_error_enters_at_the_outlier_layer():
    layers = _outlier_layers(calib_fires=True)
    relus = _relus(layers)
    assert len(relus) == 3, [(r.name, r.op) for r in layers]
    first, bad, after = relus
    # Named first: the tensor whose own grid costs most.
    assert worst(layers)[0].name == bad.name, diagnose_table(layers)
    assert bad.sqnr_db_isolated < 6.0, diagnose_table(layers)
    assert bad.scale > 1.0  # the grid the 1e3 channel set on calibration
    # Upstream of it every grid fits: input and first ReLU lose little on their own and in total.
    upstream = [r for r in layers if r.index < bad.index]
    assert upstream and all(r.sqnr_db_isolated > 30.0 and r.sqnr_db_accumulated > 25.0 for r in upstream), \
        diagnose_table(layers)
    # Downstream: the third conv only sees the crushed tensor. Its own grid is fine, but no later
    # layer can restore what was rounded away: the error there carries about as much power as the
    # signal, so its accumulated SQNR stays near the bad layer's isolated one. 3 dB is a factor of 2
    # in noise power: it covers the linear mixing of c3 (which can weigh the surviving and lost
    # parts differently) but not a recovery.
    assert after.sqnr_db_isolated > 30.0, diagnose_table(layers)
    assert after.sqnr_db_accumulated <= bad.sqnr_db_isolated + 3.0, diagnose_table(layers)
    assert first.sqnr_db_accumulated > 25.0
    # Accumulated never beats isolated by much at the bad layer (upstream error only adds).
    assert bad.sqnr_db_accumulated <= bad.sqnr_db_isolated + 1.0


@pytest.mark.slow
def test_control_without_outlier_on_calibration():
    """Calibrated like it is evaluated (the detector never fires): that layer's grid fits, nothing stands out."""
    layers = _outlier_layers(calib_fires=False)
    _, bad, _ = _relus(layers)
    assert bad.scale < 0.1
    assert bad.sqnr_db_isolated > 30.0, diagnose_table(layers)
    assert min(r.sqnr_db_isolated for r in layers) > 25.0, diagnose_table(layers)


class WeightOutlierNet(OutlierNet):
    """OutlierNet with c2's every output channel also reading the dead channel 0 with weight 1e3.

    c1[0] never fires on the images used here (``x[:, 0] <= 0``), so that weight changes nothing in
    float, but it sets every per-channel weight grid of c2 to a step of ~8: c2's other weights
    (|w| ~ 0.2) all round to 0. The activations' grids all fit: the loss is in the weights alone.
    """

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.c2.weight[:, 0, 1, 1] = OUTLIER_GAIN


@pytest.mark.slow
def test_error_split_names_the_side_that_loses():
    calib, held = _images(32, 1, detector=True), _images(32, 2, detector=False)
    acts = quantize_model(OutlierNet().eval(), (calib[:1],), [calib], target="pte")
    split = error_split(acts, held)
    # The outlier grid crushes an activation (its isolated SQNR < 6 dB above; the logits, which
    # also read the other channels, measured 14.4 dB); every weight grid fits (measured 48 dB).
    assert split.sqnr_db_activations_only < 20.0 and split.sqnr_db_weights_only > 30.0, split
    assert split.verdict.startswith("activations") and split.images == 32
    # The int8 graph carries both errors: never better than its worse side by more than the margin.
    assert split.sqnr_db <= split.sqnr_db_activations_only + SPLIT_MARGIN_DB, split
    calm = _images(32, 1, detector=False)
    weights = quantize_model(WeightOutlierNet().eval(), (calm[:1],), [calm], target="tflite")
    split = error_split(weights, held)
    assert split.sqnr_db_weights_only < 20.0 and split.sqnr_db_activations_only > 30.0, split  # measured 1.7, 42.9
    assert split.verdict.startswith("weights")


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    model = randomize_batchnorm(edge_se.build_model("mobilenetv3_small_050", num_classes=10).eval())
    calib = [torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(3))]
    qm = quantize_model(model, (calib[0][:1],), calib, target="pte")
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    return qm, images, diagnose(qm, images)


@pytest.mark.slow
def test_float_graph_is_the_reference(mobilenet):
    qm, images, _ = mobilenet
    with torch.no_grad():
        ref, fused = qm.reference(images), float_graph(qm)(images)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mobilenet_layers_and_se_blocks(mobilenet, tmp_path):
    qm, _, layers = mobilenet
    assert len(layers) > 50
    assert [r.index for r in layers] == list(range(len(layers)))
    for r in layers:
        assert KEYS <= set(r.as_dict()), r
        assert r.op.startswith("aten.") or r.op == "input"
    assert layers[0].op == "input"
    # Nothing is upstream of the input: both SQNRs are the same figure.
    assert layers[0].sqnr_db_accumulated == pytest.approx(layers[0].sqnr_db_isolated)
    # The first conv's output (its BatchNorm folded in, as in the int8 graph) lines up with float:
    # comparing against the unfused conv would give a few dB at most.
    first_conv = next(r for r in layers if r.op == "aten.conv2d.default")
    assert first_conv.sqnr_db_accumulated > 25.0, diagnose_table(layers)
    by_name = {r.name: r for r in layers}
    assert qm.se_blocks
    for b in qm.se_blocks:
        assert by_name[b.mul].se_block == b.name
        assert by_name[b.act].se_block == b.name
    members = {b.name for b in qm.se_blocks}
    assert {r.se_block for r in layers if r.se_block} == members
    outside = {b.pool for b in qm.se_blocks} | {b.mul for b in qm.se_blocks}
    assert any(r.se_block is None and r.name not in outside for r in layers)
    png = plot_fidelity(layers, str(tmp_path / "d.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = diagnose_table(worst(layers, 3)).splitlines()
    assert len(table) == 2 + 3 and "SQNR isolated" in table[0]


@pytest.mark.slow
def test_cli_json(capsys, tmp_path):
    plot = tmp_path / "p.png"
    argv = ["diagnose", "mobilenetv3_small_050", "--calib", "random", "--calib-size", "16", "--resolution", "32",
            "--eval-size", "8", "--top", "4", "--json", "--plot", str(plot), "--threads", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert {"model", "format", "policy", "images", "error_split", "layers", "worst"} <= set(record)
    assert {"sqnr_db", "sqnr_db_weights_only", "sqnr_db_activations_only", "verdict"} <= set(record["error_split"])
    assert record["model"] == "mobilenetv3_small_050" and record["format"] == "pte"
    assert record["images"]["count"] == 8
    assert all(KEYS <= set(r) for r in record["layers"])
    assert len(record["worst"]) == 4
    iso = [r["sqnr_db_isolated"] for r in record["worst"]]
    assert iso == sorted(iso) and iso[0] == min(r["sqnr_db_isolated"] for r in record["layers"])
    assert any(r["se_block"] for r in record["layers"])
    assert plot.read_bytes()[:4] == b"\x89PNG"


def _one_line_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("W")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert pattern in err[0], err[0]


def test_bad_policy(capsys):
    _one_line_error(capsys, ["diagnose", "mobilenetv3_small_050", "--policy", "ptq,magic"], "unknown policy 'magic'")


def test_bad_data_name(capsys):
    _one_line_error(capsys, ["diagnose", "mobilenetv3_small_050", "--calib", "imagenet"],
                    "unknown calibration source 'imagenet'")


def test_weights_of_another_model(capsys, tmp_path):
    from edge_se.train import save_weights

    path = tmp_path / "w.pt"
    save_weights(path, edge_se.build_model("mobilenetv3_small_050", num_classes=10), model_name="mobilenetv3_small_050",
                 num_classes=10, resolution=32)
    _one_line_error(capsys, ["diagnose", "mobilenetv3_small_100", "--weights", str(path), "--calib", "random"],
                    "was saved for 'mobilenetv3_small_050'")
