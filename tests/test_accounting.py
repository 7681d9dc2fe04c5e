"""Accounting against the built modules, an independent FLOP counter, and published figures."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import edge_se
from edge_se.plan import resolve
from tests.tolerances import PUBLISHED_REL

ALL = edge_se.list_models() + ["efficientnet_phi1.5", "efficientnet_phi-1"]


def _module_params(model: torch.nn.Module, name: str) -> int:
    return sum(p.numel() for p in model.get_submodule(name).parameters(recurse=False))


@pytest.mark.parametrize("name", ALL)
def test_every_variant_builds_runs_and_every_row_matches_its_module(name):
    model = edge_se.build_model(name).eval()
    acc = edge_se.count(model.spec, 64)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert acc.params == sum(p.numel() for p in model.parameters())
    for row in acc.rows:
        if row.kind in ("conv", "dwconv", "linear", "bn"):
            assert row.params == _module_params(model, row.name), row.name
    assert acc.se_blocks == len(edge_se.se_modules(model))
    if name.endswith("_nose") or name == "resnet50":
        assert acc.se_params == acc.se_macs == acc.se_blocks == 0


@pytest.mark.parametrize(
    ("name", "resolution"),
    [
        ("efficientnet_b0", 224),
        ("efficientnet_b0", 97),
        ("mobilenetv3_large_100", 224),
        ("mobilenetv3_small_075", 161),
        ("seresnet50", 128),
        ("seresnet50_nose", 65),
        ("efficientnet_phi0.5", 120),
    ],
)
def test_macs_equal_half_of_torch_flop_counter(name, resolution):
    # flop_counter counts 2 FLOPs per multiply-accumulate of conv and mm/addmm and nothing else,
    # which is exactly edge-se's MAC convention: the totals must agree to the unit.
    model = edge_se.build_model(name).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    assert fc.get_total_flops() == 2 * edge_se.count(model.spec, resolution).macs


def test_se_macs_are_two_c_squared_over_r_per_block():
    spec = edge_se.get_spec("efficientnet_b0")
    expected = sum(2 * b.se.channels * b.se.reduced for b in resolve(spec) if b.se is not None)
    acc = edge_se.count(spec)
    assert acc.se_macs == expected
    # squeeze + gate + scale are element-wise ops, shown apart from MACs
    assert acc.se_ops > 0 and all(r.macs == 0 for r in acc.rows if r.kind in ("pool", "gate", "scale"))


# Published figures: EfficientNet paper Table 2 (B0 5.3M, 0.39B FLOPs meaning MACs); MobileNetV3
# paper Tables 3-4 (Large 5.4M / 219M MAdds, Small 2.5M / 56M MAdds); SE paper Table 2 (SE-ResNet-50
# 28.1M vs ResNet-50 25.6M); ResNet-50 in the torchvision layout (stride on the 3x3) is 4.09G MACs.
@pytest.mark.parametrize(
    ("name", "params", "macs"),
    [
        ("efficientnet_b0", 5.3e6, 0.39e9),
        ("mobilenetv3_large_100", 5.4e6, 0.219e9),
        ("mobilenetv3_small_100", 2.5e6, 0.056e9),
        ("seresnet50", 28.1e6, 4.09e9),
        ("resnet50", 25.6e6, 4.09e9),
    ],
)
def test_published_figures(name, params, macs):
    acc = edge_se.count(edge_se.get_spec(name))
    assert acc.params == pytest.approx(params, rel=PUBLISHED_REL)
    assert acc.macs == pytest.approx(macs, rel=PUBLISHED_REL)


def test_exact_counts_match_torchvision_and_timm_models():
    # The same architectures as built by torchvision/timm, counted by summing their tensors.
    import timm
    import torchvision

    pairs = {
        "efficientnet_b0": torchvision.models.efficientnet_b0(),
        "efficientnet_b4": torchvision.models.efficientnet_b4(),
        "mobilenetv3_large_100": torchvision.models.mobilenet_v3_large(),
        "mobilenetv3_small_100": torchvision.models.mobilenet_v3_small(),
        "resnet50": torchvision.models.resnet50(),
        "seresnet50": timm.create_model("seresnet50"),
    }
    for name, ref in pairs.items():
        assert edge_se.count(edge_se.get_spec(name)).params == sum(p.numel() for p in ref.parameters()), name


def test_se_costs_almost_no_macs_in_seresnet50():
    se, plain = (edge_se.count(edge_se.get_spec(n)) for n in ("seresnet50", "resnet50"))
    assert se.params - plain.params == se.se_params == 2_530_992
    # SE paper: 3.87 vs 3.86 GFLOPs (+0.26%); in this layout +0.06% (2.5M MACs on 4.09G).
    assert 0 < (se.macs - plain.macs) / plain.macs < 0.003
    twin = edge_se.count(edge_se.get_spec("seresnet50_nose"))
    assert twin.params == plain.params and twin.macs == plain.macs


def test_efficientnet_scaling_table_and_phi():
    # B0..B7: params grow, resolution as published; phi names build with the paper's coefficients.
    published_res = {f"efficientnet_b{i}": r for i, r in enumerate([224, 240, 260, 300, 380, 456, 528, 600])}
    params = [edge_se.count(edge_se.get_spec(n)).params for n in published_res]
    assert params == sorted(params)
    for n, r in published_res.items():
        assert edge_se.get_spec(n).resolution == r
    s = edge_se.efficientnet_phi(1.5)
    assert s.name == "efficientnet_phi1.5" and s.resolution == 280
    assert edge_se.get_spec("efficientnet_phi1.5") == s
    custom = edge_se.efficientnet_phi(1.0, alpha=1.3, beta=1.2, gamma=1.1)
    assert custom.name == "efficientnet_phi1_a1.3_b1.2_g1.1"
    assert [st.repeats for st in custom.stages] == [2, 3, 3, 4, 4, 6, 2]  # ceil(r * 1.3)
