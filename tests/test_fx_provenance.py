"""export.fx_provenance: sharing torch.fx's provenance records changes neither the records nor the artifact."""

from __future__ import annotations

import pytest
import torch
from device_artifacts import RESOLUTION, _model, pte_with_and_without
from torch.fx.traceback import NodeSource

from export.fx_provenance import shared_provenance


def _without_ids(record: dict) -> dict:
    """A record without ``graph_id`` (the ``id()`` of a graph object, different in every run)."""
    return {k: [_without_ids(r) for r in v] if k == "from_node" else v for k, v in record.items() if k != "graph_id"}


def _provenance(gm: torch.fx.GraphModule) -> list[list[dict]]:
    return [[_without_ids(s.to_dict()) for s in n.meta.get("from_node", [])] for n in gm.graph.nodes]


def _decomposed() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    ep = torch.export.export(_model().eval(), (torch.randn(1, 3, RESOLUTION, RESOLUTION),))
    # two re-tracing passes: the second one's records hold the first one's history
    return ep.run_decompositions().run_decompositions().graph_module


def test_records_are_the_ones_a_deep_copy_gives():
    plain = _provenance(_decomposed())
    with shared_provenance():
        shared = _provenance(_decomposed())
    assert shared == plain
    assert any(len(r) for r in plain), "no node carries provenance: the test would compare nothing"


def test_the_constructor_is_restored_after_nesting_and_errors():
    original = NodeSource.__init__
    with pytest.raises(RuntimeError), shared_provenance():
        with shared_provenance():
            assert NodeSource.__init__ is not original
        assert NodeSource.__init__ is not original  # the outer block still holds it
        raise RuntimeError("the lowering failed")
    assert NodeSource.__init__ is original


@pytest.mark.slow
@pytest.mark.export
def test_the_lowered_program_is_byte_identical(monkeypatch):
    shared, plain = pte_with_and_without(monkeypatch, "shared_provenance")
    assert NodeSource.__init__.__name__ == "__init__"  # torch's own constructor outside the patch
    assert shared == plain
