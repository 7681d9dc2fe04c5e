"""Run an FX graph on batches and record chosen intermediate values (SE gates) beside its output."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.fx import GraphModule, Interpreter, Node

from quantize.se_pattern import SEBlock

# Images per forward pass while evaluating: bounds peak memory at small resolutions.
EVAL_BATCH = 64


class Recorder(Interpreter):
    """Runs a graph and keeps the values of the nodes ``names`` (``flatten``: as float ``[N, -1]``)."""

    def __init__(self, gm: GraphModule, names: set[str], *, flatten: bool = True) -> None:
        super().__init__(gm)
        self.names = names
        self.flatten = flatten
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: Node) -> object:
        """Run ``n`` and keep its value when it is one of ``names``."""
        out = super().run_node(n)
        if n.name in self.names and isinstance(out, torch.Tensor):
            value = out.detach()
            self.values[n.name] = value.flatten(1).float() if self.flatten else value
        return out


def gate_inputs(gm: GraphModule, blocks: Sequence[SEBlock]) -> dict[str, str]:
    """``{block name: node name}`` of the value each block's multiply takes as its gate.

    In a converted int8 graph that is the dequantised gate, i.e. exactly what scales the channels.

    Raises:
        KeyError: a block's multiply is not in ``gm`` (graph and blocks from different models).
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    out = {}
    for b in blocks:
        if b.mul not in nodes:
            raise KeyError(f"SE block {b.name!r}: multiply node {b.mul!r} not found in the graph")
        arg = nodes[b.mul].args[b.gate_arg]
        out[b.name] = arg.name if isinstance(arg, Node) else b.gate
    return out


@torch.no_grad()
def run_graph(
    gm: GraphModule, images: torch.Tensor, blocks: Sequence[SEBlock] = (), *, batch: int = EVAL_BATCH
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits ``[N, K]`` of ``gm`` on ``images`` and, per SE block, its gate vectors ``[N, C]``."""
    wanted = gate_inputs(gm, blocks) if blocks else {}
    logits: list[torch.Tensor] = []
    gates: dict[str, list[torch.Tensor]] = {b: [] for b in wanted}
    for start in range(0, images.shape[0], batch):
        x = images[start : start + batch]
        if wanted:
            rec = Recorder(gm, set(wanted.values()))
            out = rec.run(x)
            for block, node in wanted.items():
                gates[block].append(rec.values[node])
        else:
            out = gm(x)
        logits.append((out[0] if isinstance(out, (tuple, list)) else out).detach().float())
    return torch.cat(logits), {b: torch.cat(v) for b, v in gates.items()}
