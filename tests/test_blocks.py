import math

import pytest
import torch

import edge_se
from edge_se.blocks import SqueezeExcite
from tests.tolerances import SAME_MATH_ATOL


def _hand_se(gate: str) -> SqueezeExcite:
    se = SqueezeExcite(2, 1, act="relu", gate=gate)
    with torch.no_grad():
        se.fc1.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        se.fc1.bias.zero_()
        se.fc2.weight.copy_(torch.tensor([2.0, -2.0]).view(2, 1, 1, 1))
        se.fc2.bias.copy_(torch.tensor([0.0, 1.0]))
    return se


# Channel 0 = [[1, 2], [3, 4]] (mean 2.5), channel 1 = [[0, 0], [0, 4]] (mean 1).
# fc1: 2.5 - 1 = 1.5 -> ReLU 1.5; fc2: (2 * 1.5 + 0, -2 * 1.5 + 1) = (3, -2).
_X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 4.0]]]])
_EXPECTED_GATES = {
    "sigmoid": (1 / (1 + math.exp(-3)), 1 / (1 + math.exp(2))),
    "hsigmoid": (1.0, 1.0 / 6.0),  # relu6(3 + 3) / 6 = 1, relu6(-2 + 3) / 6 = 1/6
    "softmax": (math.exp(3) / (math.exp(3) + math.exp(-2)), math.exp(-2) / (math.exp(3) + math.exp(-2))),
}


@pytest.mark.parametrize("gate", sorted(_EXPECTED_GATES))
def test_se_arithmetic_by_hand(gate):
    se = _hand_se(gate)
    g0, g1 = _EXPECTED_GATES[gate]
    expected = torch.stack([_X[0, 0] * g0, _X[0, 1] * g1]).unsqueeze(0)
    out = se(_X)
    err = (out - expected).abs()
    assert err.max() < SAME_MATH_ATOL, f"max abs err {err.max():.3g}, mean {err.mean():.3g}"
    gates = se.excitation(_X).flatten()
    assert gates.tolist() == pytest.approx([g0, g1], abs=SAME_MATH_ATOL)


def test_se_parameter_and_mac_formula():
    se = SqueezeExcite(96, 24)
    assert sum(p.numel() for p in se.parameters()) == 2 * 96 * 24 + 24 + 96


@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity"])
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100", "seresnet50"])
def test_placements_build_run_and_count(name, placement):
    model = edge_se.build_model(name, placement=placement).eval()
    spec = model.spec
    acc = edge_se.count(spec, 64)
    assert acc.params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    # The reduction ratio r of the standard placement is kept wherever SE sits (ablations vary only
    # the position); the reduced width may differ from channels / r by the rounding divisor.
    r_std = {se.channels / se.reduced for se in edge_se.se_modules(edge_se.build_model(name)).values()}
    divisor = max(spec.se.divisor, 1)
    for se in edge_se.se_modules(model).values():
        assert any(abs(se.reduced - se.channels / r) <= divisor for r in r_std), (se.channels, se.reduced)


def test_placement_changes_the_function_not_the_weights_layout():
    torch.manual_seed(0)
    std = edge_se.build_model("seresnet50", placement="standard").eval()
    post = edge_se.build_model("seresnet50", placement="post").eval()
    post.load_state_dict(std.state_dict())  # same shapes in a bottleneck: out-channel SE either way
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(std(x), post(x))


def test_capture_gates_leaves_outputs_and_hooks_untouched():
    model = edge_se.build_model("mobilenetv3_small_100").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        with edge_se.capture_gates(model) as gates:
            during = model(x)
            model(x[:1])
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    ses = edge_se.se_modules(model)
    assert list(gates) == list(ses)
    for name, se in ses.items():
        assert gates[name].shape == (4, se.channels)  # two passes concatenated: 3 + 1 images
        assert ((gates[name] >= 0) & (gates[name] <= 1)).all()  # hard-sigmoid range
        assert not se.gate._forward_hooks


@pytest.mark.slow
def test_model_still_exports_after_gate_capture():
    model = edge_se.build_model("mobilenetv3_small_050").eval()
    x = torch.randn(1, 3, 64, 64)
    with edge_se.capture_gates(model):
        model(x)
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x), atol=SAME_MATH_ATOL)
