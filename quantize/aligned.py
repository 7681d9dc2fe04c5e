"""The float graph whose node names and values line up with a converted PT2E graph.

``prepare_pt2e`` fuses Conv/Linear + BatchNorm and runs the quantizer's ``transform_for_annotation``
(edge-se's int8 rewrites edit weights and keep node names) before it annotates. The exported float
graph put through the same steps holds, node for node, the float value of what the converted graph
computes: ``diagnose`` compares the two per tensor, bias correction per layer.
"""

from __future__ import annotations

import copy

from torch.fx import GraphModule

#: The layers with a weight and a bias that PT2E fuses BatchNorm into and quantises per output channel:
#: what bias correction, AdaRound and the error split edit.
WEIGHTED_OPS: tuple[str, ...] = ("aten.conv2d.default", "aten.linear.default")


def aligned_float_graph(reference: GraphModule, quantizer: object) -> GraphModule:
    """``reference`` (the exported float graph) through the steps ``prepare_pt2e`` takes with ``quantizer``.

    ``reference`` is not modified.
    """
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

    gm = copy.deepcopy(reference)
    _fuse_conv_bn_(gm)
    _fuse_linear_bn_(gm)
    transform = getattr(copy.copy(quantizer), "transform_for_annotation", None)  # a copy: it records what it applied
    if transform is not None:
        gm = transform(gm)
    gm.recompile()
    return gm
