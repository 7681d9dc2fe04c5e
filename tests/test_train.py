"""edge_se.train: the recipe learns, BN statistics are re-estimated, weights round-trip with a sidecar."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import edge_se
from edge_se.data import ImageSet, load_images
from edge_se.errors import EdgeSeError
from edge_se.train import (
    LINEAR_INIT_STD,
    TRAIN_BN_MOMENTUM,
    init_linear_layers,
    load_float_model,
    load_model,
    recalibrate_bn,
    save_weights,
    train,
)

# Cumulative-average BN statistics vs the statistics of the whole set: float32 sums over batches.
BN_STATS_ATOL = 1e-4
# 4 epochs of MobileNetV3-Small-0.5 at 32x32 on the digits training split reached 0.9+ held-out
# accuracy when measured; 0.7 leaves room for thread-order noise and is far above chance (0.1).
SHORT_RUN_MIN_ACCURACY = 0.7


def test_recalibrate_bn_matches_data_statistics():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01))
    x = torch.randn(40, 3, 8, 8) * 3 + 1
    recalibrate_bn(net, x, batch_size=8)
    feats = net[0](x)
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=BN_STATS_ATOL)
    assert net[1].momentum == 0.01, "the model's own momentum is restored"


# The sample std of 1024*576 normal draws is within 1% of the target; the builder's
# uniform(+-1/sqrt(10)) classifier init has std 0.18, 18x the recipe's.
INIT_STD_RTOL = 0.01


def test_init_linear_layers_sets_small_normal_weights_and_keeps_convs():
    model = edge_se.build_model("mobilenetv3_small_100", num_classes=10)
    conv_before = model.stem.conv.weight.clone()
    assert init_linear_layers(model) == 2  # head_fc and classifier
    w = model.head_fc.weight
    assert abs(float(w.std()) - LINEAR_INIT_STD) <= INIT_STD_RTOL * LINEAR_INIT_STD
    assert float(model.classifier.weight.std()) < 2 * LINEAR_INIT_STD
    assert float(model.classifier.bias.abs().max()) == 0.0
    assert torch.equal(model.stem.conv.weight, conv_before), "only Linear layers are re-initialised"


@pytest.fixture
def one_thread():
    # Two threads per process on a shared 2-core machine ran training steps 7-15x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_short_training_learns_digits_and_restores_momentum(one_thread):
    torch.manual_seed(0)
    model = edge_se.build_model("mobilenetv3_small_050", num_classes=10)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.01} and TRAIN_BN_MOMENTUM == 0.1
    result = train(model, load_images("digits", 32, split="train"), epochs=4,
                   eval_data=load_images("digits", 32, split="test"))
    assert result.accuracy is not None and result.accuracy >= SHORT_RUN_MIN_ACCURACY, result
    assert result.losses[-1] < result.losses[0]
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_train_rejects_unlabelled_data_and_bad_epochs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    data = ImageSet(torch.randn(4, 3, 8, 8), None, [], "random")
    with pytest.raises(EdgeSeError, match="no labels"):
        train(model, data, epochs=1)
    with pytest.raises(EdgeSeError, match="bad epochs 0"):
        train(model, ImageSet(data.images, torch.zeros(4, dtype=torch.int64), ["a"], "x"), epochs=0)


def test_weights_round_trip_and_malformed_files(tmp_path):
    model = edge_se.build_model("mobilenetv3_small_050", num_classes=10).eval()
    path = tmp_path / "w.pt"
    save_weights(path, model, model_name="mobilenetv3_small_050", num_classes=10, resolution=32,
                 extra={"accuracy": 0.5})
    meta = json.loads((tmp_path / "w.pt.json").read_text())
    assert meta["model"] == "mobilenetv3_small_050" and meta["resolution"] == 32 and meta["accuracy"] == 0.5
    loaded, _ = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    (tmp_path / "t.pt.json").write_text((tmp_path / "w.pt.json").read_text())
    with pytest.raises(EdgeSeError, match=r"weights file .*t\.pt is not a readable state dict"):
        load_model(truncated)
    (tmp_path / "t.pt.json").write_text("{not json")
    with pytest.raises(EdgeSeError, match=r"t\.pt\.json is not valid JSON"):
        load_model(truncated)
    other = tmp_path / "o.pt"
    save_weights(other, model, model_name="mobilenetv3_small_100", num_classes=10, resolution=32)
    with pytest.raises(EdgeSeError, match="does not fit mobilenetv3_small_100"):
        load_model(other)
    with pytest.raises(EdgeSeError, match="not found"):
        load_model(tmp_path / "nothing.pt")


def test_load_float_model_from_sidecar_state_dict_or_nothing(tmp_path):
    model = edge_se.build_model("mobilenetv3_small_050", num_classes=10).eval()
    path = tmp_path / "w.pt"
    save_weights(path, model, model_name="mobilenetv3_small_050", num_classes=10, resolution=32)
    loaded, meta = load_float_model("mobilenetv3_small_050", str(path), num_classes=3)  # the sidecar's classes win
    assert meta["resolution"] == 32 and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(EdgeSeError, match="was saved for 'mobilenetv3_small_050', not 'mobilenetv3_small_100'"):
        load_float_model("mobilenetv3_small_100", str(path), num_classes=10)
    bare = tmp_path / "bare.pt"  # no sidecar: the registry's loader (edge-se/torchvision/timm naming)
    torch.save(model.state_dict(), bare)
    loaded, meta = load_float_model("mobilenetv3_small_050", str(bare), num_classes=10)
    assert meta == {}
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    fresh, meta = load_float_model("mobilenetv3_small_050", None, num_classes=4)
    assert meta == {} and not fresh.training and fresh(x).shape == (2, 4)


def test_the_linear_inits_are_the_ones_they_name():
    from edge_se.init import LINEAR_INITS, init_linear

    torch.manual_seed(0)
    model = edge_se.build_model("efficientnet_b0", num_classes=10)
    head = model.classifier
    init_linear(model, "efficientnet-uniform")
    bound = 1 / 10**0.5  # U(+-1/sqrt(out_features)) for a 10-class head
    assert float(head.weight.abs().max()) <= bound and float(head.weight.abs().max()) > 0.9 * bound
    init_linear(model, "torch-default")  # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
    fan_in = head.weight.shape[1]
    assert float(head.weight.abs().max()) <= 1 / fan_in**0.5 + 1e-6
    init_linear(model, "recipe")
    assert abs(float(head.weight.std()) - LINEAR_INIT_STD) < 0.2 * LINEAR_INIT_STD
    assert set(LINEAR_INITS) == {"recipe", "torch-default", "efficientnet-uniform"}
    with pytest.raises(ValueError, match="unknown --init 'xavier'; valid: recipe, torch-default"):
        init_linear(model, "xavier")


def test_saved_weights_are_the_same_bytes_wherever_they_are_written(tmp_path):
    """The cache key of a train cell is the weights' sha256: it must not depend on the file's name."""
    from edge_se.train import save_weights

    model = edge_se.build_model("mobilenetv3_small_050", num_classes=10)
    a = save_weights(tmp_path / "a" / "w.pt", model, model_name="mobilenetv3_small_050", num_classes=10,
                     resolution=32)
    b = save_weights(tmp_path / "b" / "other.pt", model, model_name="mobilenetv3_small_050", num_classes=10,
                     resolution=32)
    assert a.read_bytes() == b.read_bytes()
