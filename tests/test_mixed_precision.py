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
