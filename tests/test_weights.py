"""Strict loading of torchvision/timm weights: same outputs as the source model (nothing downloaded)."""

import pytest
import torch

from edge_se.errors import EdgeSeError
from edge_se.weights import load_weights
from tests.tolerances import SAME_MATH_ATOL


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Fresh torchvision/timm models have unit BN statistics and near-zero logits, which would hide a
    # mis-mapped tensor: give every BN random statistics and affine parameters first.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _tv(name):
    import torchvision

    return lambda: getattr(torchvision.models, name)()


def _timm(name):
    import timm

    return lambda: timm.create_model(name)


CASES = [(f"efficientnet_b{i}", _tv(f"efficientnet_b{i}"), "torchvision") for i in range(8)]
CASES += [(f"efficientnet_b{i}", _timm(f"efficientnet_b{i}"), "timm") for i in range(8)]
CASES += [
    ("mobilenetv3_large_100", _tv("mobilenet_v3_large"), "torchvision"),
    ("mobilenetv3_small_100", _tv("mobilenet_v3_small"), "torchvision"),
    ("mobilenetv3_large_100", _timm("mobilenetv3_large_100"), "timm"),
    ("mobilenetv3_small_100", _timm("mobilenetv3_small_100"), "timm"),
    ("resnet50", _tv("resnet50"), "torchvision"),
    ("seresnet50", _timm("seresnet50"), "timm"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "factory", "source"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_loaded_model_matches_source_model(tmp_path, name, factory, source):
    ref = _randomise(factory())
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    model = load_weights(name, path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), model(x)
    err = (a - b).abs()
    assert err.max() <= SAME_MATH_ATOL * max(1.0, a.abs().max().item()), (
        f"{name} from {source}: max abs err {err.max():.3g}, mean {err.mean():.3g}"
    )


def test_sorted_keys_and_custom_classifier_load(tmp_path):
    import torchvision

    ref = _randomise(torchvision.models.mobilenet_v3_small(num_classes=10))
    state = dict(sorted(ref.state_dict().items()))  # order must not matter
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    model = load_weights("mobilenetv3_small_100", tmp_path / "w.pt").eval()
    assert model.spec.num_classes == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ref(x) - model(x)).abs().max() <= SAME_MATH_ATOL


def test_edge_se_round_trip(tmp_path):
    import edge_se

    m = edge_se.build_model("efficientnet_phi-1", num_classes=7).eval()
    torch.save(m.state_dict(), tmp_path / "own.pt")
    back = load_weights("efficientnet_phi-1", tmp_path / "own.pt").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), back(x))


def test_malformed_weights_give_one_line_errors(tmp_path):
    import torchvision

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04not really a pickle" * 10)
    with pytest.raises(EdgeSeError, match="garbage.pth.*not a readable torch state dict"):
        load_weights("efficientnet_b0", garbage)
    with pytest.raises(EdgeSeError, match="does not exist"):
        load_weights("efficientnet_b0", tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(EdgeSeError, match="holds list"):
        load_weights("efficientnet_b0", tmp_path / "list.pth")
    # Wrong architecture: B1 weights into B0 (extra blocks), MobileNetV3-Small into Large.
    torch.save(torchvision.models.efficientnet_b1().state_dict(), tmp_path / "b1.pth")
    with pytest.raises(EdgeSeError, match="blocks"):
        load_weights("efficientnet_b0", tmp_path / "b1.pth")
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "s.pth")
    with pytest.raises(EdgeSeError, match="blocks|shape"):
        load_weights("mobilenetv3_large_100", tmp_path / "s.pth")
    # One tensor of the right name but wrong shape, and one missing tensor.
    state = torchvision.models.efficientnet_b0().state_dict()
    state["features.0.0.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(EdgeSeError, match=r"stem.conv.weight has shape \(32, 3, 5, 5\)"):
        load_weights("efficientnet_b0", tmp_path / "shape.pth")
    state = torchvision.models.efficientnet_b0().state_dict()
    del state["features.1.0.block.1.fc2.bias"]
    torch.save(state, tmp_path / "missing_tensor.pth")
    with pytest.raises(EdgeSeError, match="lacks 1 tensor"):
        load_weights("efficientnet_b0", tmp_path / "missing_tensor.pth")


def test_weights_only_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(EdgeSeError, match="not a readable torch state dict"):
        load_weights("efficientnet_b0", tmp_path / "evil.pth")
