"""export.xnnpack_pattern_passes: the two pattern passes skip only graphs their patterns cannot match."""

from __future__ import annotations

import pytest
import torch
from device_artifacts import pte_with_and_without

from export.xnnpack_pattern_passes import ANCHORS, _classes, has_operator, matching_pattern_passes_only


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
    with pytest.raises(RuntimeError), matching_pattern_passes_only():
        with matching_pattern_passes_only():
            assert all(cls.call is not original[n] for n, cls in _classes().items())
        assert all(cls.call is not original[n] for n, cls in _classes().items())  # the outer block holds it
        raise RuntimeError("the lowering failed")
    assert {name: cls.call for name, cls in _classes().items()} == original


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
        with matching_pattern_passes_only():
            cls.call(object.__new__(cls), up)
            no_anchor = to_edge(torch.export.export(torch.nn.ReLU(), (torch.randn(2),))).exported_program()
            result = cls.call(object.__new__(cls), no_anchor.graph_module)
        assert calls == ["ran"] and result.modified is False
    finally:
        cls.call = original


@pytest.mark.slow
@pytest.mark.export
def test_the_lowered_program_is_byte_identical(monkeypatch):
    skipped, full = pte_with_and_without(monkeypatch, "matching_pattern_passes_only")
    assert skipped == full
