"""export.xnnpack_anchored_passes: XNNPACK passes skip only graphs without the operators they act on."""

from __future__ import annotations

import pytest
import torch
from device_artifacts import pte_with_and_without

from export.xnnpack_anchored_passes import ANCHORS, WANTED, _classes, anchored_passes_only, has_conv1d, has_operator


@pytest.mark.slow
@pytest.mark.export
def test_every_pattern_holds_its_anchor():
    # The skip is sound only if no pattern can match without its anchor operator in the graph.
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    patterns = {"ConvertToUpsampleBilinear2d": bilinear_2d.get_graphs(), "ConvertToSDPAPass": sdpa.get_graphs()}
    for name, graphs in patterns.items():
        assert graphs, f"{name}: no pattern traced"
        for g in graphs:
            assert has_operator(g, ANCHORS[name]), f"{name}: a pattern without {ANCHORS[name]}"


def test_the_passes_are_restored_after_nesting_and_errors():
    original = {name: cls.call for name, cls in _classes().items()}
    own = {name for name, cls in _classes().items() if "call" in vars(cls)}
    assert set(_classes()) == set(ANCHORS) == set(WANTED)
    with pytest.raises(RuntimeError), anchored_passes_only():
        with anchored_passes_only():
            assert all(cls.call is not original[n] for n, cls in _classes().items())
        assert all(cls.call is not original[n] for n, cls in _classes().items())  # the outer block holds it
        raise RuntimeError("the lowering failed")
    assert {name: cls.call for name, cls in _classes().items()} == original
    assert {name for name, cls in _classes().items() if "call" in vars(cls)} == own  # an inherited call stays so


def test_a_graph_with_the_anchor_runs_the_pass():
    from executorch.exir import to_edge

    class Up(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    up = to_edge(torch.export.export(Up(), (torch.randn(1, 3, 4, 4),))).exported_program().graph_module
    assert has_operator(up, ANCHORS["ConvertToUpsampleBilinear2d"])
    assert not has_operator(up, ANCHORS["ConvertToSDPAPass"])
    calls: list[str] = []
    cls = _classes()["ConvertToUpsampleBilinear2d"]
    original = cls.call
    try:
        cls.call = lambda self, gm: calls.append("ran")  # the unpatched pass, as the guard sees it
        with anchored_passes_only():
            cls.call(object.__new__(cls), up)
            no_anchor = to_edge(torch.export.export(torch.nn.ReLU(), (torch.randn(2),))).exported_program()
            result = cls.call(object.__new__(cls), no_anchor.graph_module)
        assert calls == ["ran"] and result.modified is False
    finally:
        cls.call = original


@pytest.mark.slow
@pytest.mark.export
def test_the_lowered_program_is_byte_identical(monkeypatch):
    skipped, full = pte_with_and_without(monkeypatch, "anchored_passes_only")
    assert skipped == full


@pytest.mark.slow
@pytest.mark.export
def test_the_lowered_program_of_a_cut_mobilenet_with_batch_norms_is_byte_identical(monkeypatch):
    # Hard-swish, hard-sigmoid gates, batch norms (FuseBatchNormPass runs), three SE blocks.
    from cut_networks import cut_mobilenet

    model = cut_mobilenet()
    skipped, full = pte_with_and_without(monkeypatch, "anchored_passes_only", model=model,
                                         example=(torch.randn(1, 3, 32, 32),))
    assert skipped == full


def test_conv1d_and_operator_tests_on_real_graphs():
    from executorch.exir import to_edge

    def edge(module: torch.nn.Module, *shape: int):
        return to_edge(torch.export.export(module.eval(), (torch.randn(*shape),))).exported_program().graph_module

    conv1d = edge(torch.nn.Conv1d(3, 4, 3), 1, 3, 8)
    conv2d_bn = edge(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), 1, 3, 8, 8)
    assert has_conv1d(conv1d) and not has_conv1d(conv2d_bn)
    assert WANTED["FuseBatchNormPass"](conv2d_bn) and not WANTED["FuseBatchNormPass"](conv1d)
    pool = edge(torch.nn.MaxPool2d(2), 1, 3, 8, 8)
    assert WANTED["RemoveGetItemPass"](pool) and not WANTED["RemoveGetItemPass"](conv2d_bn)

    class Cat(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x * 2], 1)

    assert WANTED["DecomposeConcatenate"](edge(Cat(), 1, 3)) and not WANTED["DecomposeConcatenate"](pool)
