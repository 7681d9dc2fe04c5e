"""Cross-layer equalisation (``--policy cle``, quantize/equalize.py): exact, where it applies, and what it buys."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edge_se
from quantize import quantize_model, resolve_policy
from quantize.core import export_graph
from quantize.diagnose import diagnose, float_graph
from quantize.equalize import find_pairs, scales
from quantize.metrics import sqnr_db
from quantize.quantizers import QuantizerOptions, make_quantizer
from tests.nets import with_data_statistics

RES = 16  # pixels: enough for 3x3 convolutions and a pool; every test here is about channels
# Equalisation rescales weights in float32: the equalised network computes the same function up to
# float rounding of the scaled weights and of the reordered products (a few ULPs of each layer's
# output): 100 dB logits SQNR is ~1e-5 relative, far above what a wrong scale gives (< 20 dB).
EXACT_MIN_SQNR_DB = 100.0


class ReluNet(nn.Module):
    """stem -> expand -> depthwise -> SE -> project, a residual around the last three, a classifier; ReLU throughout.

    The pairs CLE can take: expand -> depthwise (a depthwise reader), depthwise -> {SE's reduce, project}
    (through the SE's squeeze and channel multiply), the SE's reduce -> expand. The stem's ReLU is
    also read by the residual add, and the ReLU after the add by the pool: neither is a pair.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.BatchNorm2d(24), nn.ReLU())
        self.se = edge_se.SqueezeExcite(24, 8, act="relu", gate="sigmoid")
        self.pw = nn.Sequential(nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16))
        self.out = nn.ReLU()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self.out(self.pw(self.se(self.dw(self.expand(h)))) + 0.05 * h)  # weak skip: the branch decides the error
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return with_data_statistics(ReluNet(), RES)


def _prepared(model: nn.Module, target: str, equalize_: bool):
    """The graph the quantizer annotates: exported, BN folded, transformed (with or without CLE)."""
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    gm = copy.deepcopy(export_graph(model, (torch.randn(1, 3, RES, RES),)))  # its own weights, as core's
    _fuse_conv_bn_(gm)
    q = make_quantizer(target, QuantizerOptions(equalize=equalize_))
    gm = q.transform_for_annotation(gm)  # what prepare_pt2e runs before annotating (and records on q)
    gm.recompile()
    return gm, q


@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_equalised_graph_computes_the_same_function(net, target):
    skewed = _skewed(net, 0)  # channel ranges 3 decades apart: scales far from 1, so exactness means something
    x = torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(3))
    plain, _ = _prepared(skewed, target, False)
    eq, q = _prepared(skewed, target, True)
    with torch.no_grad():
        ref, got, eager = plain(x), eq(x), skewed(x)
    assert sqnr_db(ref, got) >= EXACT_MIN_SQNR_DB and sqnr_db(eager, got) >= EXACT_MIN_SQNR_DB
    report = q.edge_se_equalized
    kinds = sorted((len(p["readers"]), p["channels"]) for p in report["pairs"])
    # expand -> depthwise (24 channels, one reader), depthwise -> SE reduce and project (24, two
    # readers), SE reduce -> expand (8, one); the stem's and the post-add ReLU are not pairs
    assert kinds == [(1, 8), (1, 24), (2, 24)], report
    # The skew is undone: expand's rows spanned 3 decades (x the network's own spread), now within 2x.
    (skew,) = [p for p in report["pairs"] if p["channels"] == 24 and len(p["readers"]) == 1]
    assert skew["spread_before"] > 100 and skew["spread_after"] < 2, skew
    assert q.edge_se_applied[0].startswith("cle: 3 layer -> relu -> layer pairs equalised")


def test_unequalised_weights_stay_the_models_own(net):
    # the quantizer edits the graph's copies: the model a user passed in keeps its weights
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _prepared(net, "pte", True)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_pairs_leave_out_relus_with_other_readers_and_kept_nodes(net):
    gm, _ = _prepared(net, "pte", False)
    pairs = find_pairs(gm)
    relus = {p.relu for p in pairs}
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert adds and not any(u.name in relus for a in adds for u in a.users)  # the residual's ReLU: no pair
    assert not any(a.name in relus for add in adds for a in add.args if hasattr(a, "name"))  # nor the stem's
    assert [p.depthwise for p in pairs].count((True,)) == 1  # expand's reader is the depthwise conv
    kept = find_pairs(gm, keep=frozenset({pairs[0].producer}))
    assert len(kept) == len(pairs) - 1 and pairs[0] not in kept


def test_scales_balance_the_two_ranges_and_leave_dead_channels():
    w1 = torch.tensor([[4.0, -1.0], [0.5, 0.1], [0.0, 0.0]])  # row ranges 4, 0.5, 0 (a dead channel)
    w2 = torch.tensor([[1.0, 2.0, 3.0], [-0.25, 8.0, 1.0]])  # column ranges 1, 8, 3
    s = scales(w1, [w2])
    assert torch.allclose(s, torch.tensor([2.0, 0.25, 1.0]))  # sqrt(4/1), sqrt(0.5/8); dead: 1
    # after scaling, both ranges of channel i are sqrt(r1_i * r2_i): 2 and 2, not 4 and 1
    assert torch.allclose((w1[:2].abs().amax(1) / s[:2]), (w2[:, :2].abs().amax(0) * s[:2]))


def _skewed(model: ReluNet, seed: int) -> ReluNet:
    """``model`` with expand's output channels scaled by 1e-2..1e1 and the depthwise rows by the inverse.

    The same function, real arithmetic; the ReLU between them now spans 3 decades of channel ranges
    on one per-tensor int8 grid: the small channels fall between its levels.
    """
    m = copy.deepcopy(model)
    a = torch.logspace(-2, 1, 24)[torch.randperm(24, generator=torch.Generator().manual_seed(seed))]
    with torch.no_grad():
        bn = m.expand[1]
        bn.weight.mul_(a)
        bn.bias.mul_(a)
        m.dw[0].weight.div_(a.reshape(-1, 1, 1, 1))
    return m


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pte", "tflite"])
def test_cle_recovers_a_network_whose_relu_channels_span_three_decades(net, target):
    skewed = _skewed(net, 0)
    x = torch.randn(48, 3, RES, RES, generator=torch.Generator().manual_seed(4))
    calib, held = x[:32], x[32:]
    with torch.no_grad():
        assert sqnr_db(net(held), skewed(held)) >= EXACT_MIN_SQNR_DB  # the same function
        ref = skewed(held)
    figures, dw_out = {}, {}
    for policy in ("ptq", "cle"):
        qm = quantize_model(skewed, (calib[:1],), [calib], target=target, policy=policy, calib_size=32)
        with torch.no_grad():
            figures[policy] = sqnr_db(ref, qm.graph(held))
            # the aligned float graph is equalised as the int8 graph was: it still computes the network
            assert sqnr_db(ref, float_graph(qm)(held)) >= EXACT_MIN_SQNR_DB
        # relu_2: the depthwise convolution's ReLU, the first tensor computed from the skewed channels
        (site,) = [r for r in diagnose(qm, held) if r.name == "relu_2"]
        dw_out[policy] = site.sqnr_db_accumulated
        if policy == "cle":
            assert any(r.startswith("cle: ") for r in qm.rewrites)
    # Measured (both formats): the depthwise output 18.8 dB under ptq (a third of its input channels fall
    # below one step of the shared grid), 40.9 dB with cle; the logits 46.5 -> 48.8 dB (the global
    # pool averages the per-pixel error over 256 positions, so they move less).
    assert dw_out["cle"] >= dw_out["ptq"] + 10.0, dw_out
    assert figures["cle"] >= figures["ptq"] - 0.5, figures


def test_policy_record_and_combination():
    assert resolve_policy("cle").equalize and not resolve_policy("ptq").equalize
    assert resolve_policy("cle,adaround").adaround and resolve_policy("cle,adaround").equalize


def test_shared_constants_counts_every_reader_of_an_attribute():
    # One weight read through two get_attr nodes (each with one user) is shared all the same: CLE and
    # the int8 rewrites edit a constant only when no other operator reads it.
    from torch.fx import Graph, GraphModule

    from quantize.aligned import shared_constants
    from quantize.int8_ops import _single_use_attr

    root = nn.Module()
    root.register_buffer("w", torch.ones(2))
    root.register_buffer("b", torch.ones(2))
    g = Graph()
    x = g.placeholder("x")
    w1, w2, b = g.get_attr("w"), g.get_attr("w"), g.get_attr("b")
    y = g.call_function(torch.add, (g.call_function(torch.add, (g.call_function(torch.mul, (x, w1)), w2)), b))
    g.output(y)
    gm = GraphModule(root, g)
    assert shared_constants(gm) == {"w"}
    assert not _single_use_attr(gm, w1) and not _single_use_attr(gm, w2) and _single_use_attr(gm, b)
