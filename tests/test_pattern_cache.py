"""quantize.pattern_cache: the quantizers' pattern graphs traced once, the annotations unchanged."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from quantize import pattern_cache as pc
from quantize.quantizers import make_quantizer


class _ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn(self.conv(x)))))


def _prepared_code(train: bool) -> str:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    torch.manual_seed(0)
    model = _ConvBnRelu().train(train)
    gm = torch.export.export(model, (torch.randn(2, 3, 8, 8),)).module()
    return prepare_pt2e(copy.deepcopy(gm), make_quantizer("pte")).code  # type: ignore[arg-type]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])  # train: the conv-BN patterns match
def test_annotations_equal_those_of_fresh_traces(train, monkeypatch):
    import quantize.quantizers as qz

    reused = pc.stats["reused"]
    cached = [_prepared_code(train) for _ in range(2)]  # the second one (at least) from the cache
    assert pc.stats["reused"] > reused
    monkeypatch.setattr(qz, "cached_patterns", contextlib.nullcontext)  # torch's own tracer on every call
    fresh = _prepared_code(train)
    assert cached[0] == cached[1] == fresh


def test_each_request_gets_its_own_copy_and_the_tracer_is_restored():
    module = pc._users()[0] if pc._users() else None
    if module is None:
        make_quantizer("pte")  # imports XNNPACK's quantizer and its pattern utilities
        module = pc._users()[0]
    original = getattr(module, pc.TRACER)

    from torchao.quantization.pt2e import WrapperModule

    pattern = WrapperModule(lambda x: torch.relu(x) + 1)  # as the quantizers pass theirs

    with pc.cached_patterns():
        tracer = getattr(module, pc.TRACER)
        assert tracer is not original
        a = tracer(pattern, (torch.randn(2, 3),))
        b = tracer(pattern, (torch.randn(2, 3),))  # other values, same shape: the same graph
        traced = pc.stats["traced"]
        c = tracer(pattern, (torch.randn(4, 3),))  # another shape: traced anew
        assert pc.stats["traced"] == traced + 1
        assert a is not b and a.code == b.code
        a.graph.erase_node(next(n for n in a.graph.nodes if n.op == "output"))  # edits stay in that copy
        assert any(n.op == "output" for n in tracer(pattern, (torch.randn(2, 3),)).graph.nodes)
        assert c is not a
    assert getattr(module, pc.TRACER) is original
