"""Real SE families cut to a few blocks, for tests whose property any few blocks of the family show.

Each conversion (torch.export, ExecuTorch's lowering, litert-torch) costs time in proportion to the
graph's nodes: ~60 s for the whole MobileNetV3-Small-0.5 int8 ``.pte`` on the 2-core AVX2 CI CPU,
about a third of that for :func:`cut_mobilenet`. Tests that are about a whole family (``test_export``)
export the whole family.
"""

from __future__ import annotations

import torch

#: MobileNetV3-Small-0.5 cut to four of its eleven blocks (the depthwise-separable ReLU one, one
#: without SE, the first hard-swish one and the first of the last stage): three SE blocks, one after
#: ReLU and two after hard-swish, each gate a hard-sigmoid on its own grid.
CUT_STAGES = (0, 1, 3, 8)
SE_BLOCKS = 3


def cut_mobilenet() -> torch.nn.Module:
    """MobileNetV3-Small-0.5 with only :data:`CUT_STAGES` (random weights; the caller seeds and sets eval)."""
    import edge_se
    from edge_se.registry import get_spec

    spec = get_spec("mobilenetv3_small_050")
    return edge_se.build(spec.with_(name="mobilenetv3_small_050_cut", stages=tuple(spec.stages[i] for i in CUT_STAGES)))
