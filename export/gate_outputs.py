"""SE gate vectors as one extra artifact output (``edge-se export --gate-outputs``), after the logits.

The outputs are added to the graph that is lowered, *after* quantisation: the float model's
exported graph (fp32) or the converted PT2E graph (int8) gets each SE block's gate appended to
its output tuple, nothing else changes. The quantiser therefore sees exactly the graph of the
plain export (same observers, same scales and zero points), and output 0 is computed by the same
operators on the same values; ``tests/test_gate_outputs.py`` checks it is bit-identical to the
plain artifact in both formats.

Which value is "the gate": what the block's channel multiply takes (:func:`quantize.capture.gate_inputs`),
i.e. in an int8 graph the *dequantised* gate. That dequantize node is duplicated for the output:
XNNPACK folds a dequantize into the multiply that consumes it, and an output that shares the
node is then never written (measured: all zeros from ExecuTorch 1.5); a second dequantize of the
same quantised tensor is lowered as its own int8 -> fp32 convert.

Layout (``concat``, the default): every block's gate ``[1, C_b, 1, 1]`` is concatenated along the
channel axis into **one** output ``[1, sum C_b, 1, 1]`` (output 1); the manifest gives each block's
``offset`` and ``channels`` in it. No reshape op is added (the gates keep their rank), so nothing
new can fall outside the delegate: the cost is one ``cat`` and one output. In an int8 ``.pte``
whose gates all share one grid (``--policy gate-fixed``: 1/256), the ``cat`` is of the int8 gates
themselves (:func:`_packed_int8`) and output 1 is int8 on that grid (manifest ``outputs[1].scale``
/ ``zero_point``): no int8 -> fp32 convert per gate. With ``ptq``'s per-gate grids XNNPACK's int8
concatenate cannot take them, and the ``cat`` is of the dequantised gates, in float32. Why one output: the
measured cost of the former layout (one output per SE block) was +22% / +27% latency on a 0.2 ms
``.pte`` (results/anomaly_device.md, 9 blocks), almost all of it fixed per-output work in the
runtime's ``execute`` (each output is allocated and handed back on its own). ``separate`` keeps
that layout (output ``1 + b`` for block ``b``). ``quantized`` is ``separate`` with each gate as
the artifact computes it: in an int8 graph the output is the gate's *quantised* tensor (the
dequantize's input), so the program returns int8 and the manifest's ``outputs[i].scale`` /
``zero_point`` say how to read it (:func:`gate_quant`). In an int8 ``.pte`` this removes the one
int8 -> fp32 convert per gate that the other layouts cost (measured in results/anomaly_device.md);
an int8 ``.tflite`` returns int8 outputs with their own scale in every layout, and an fp32 graph
has no quantised gate, so there it equals ``separate``. Readers split, flatten and dequantise with
:func:`device_bench.gate_score.gate_arrays`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch.fx import GraphModule

from contract.formats import GATE_LAYOUTS
from edge_se.errors import EdgeSeError
from quantize.capture import gate_inputs
from quantize.se_pattern import SEBlock, find_se_blocks


def se_blocks(gm: GraphModule, *, model_name: str) -> list[SEBlock]:
    """The SE blocks of ``gm`` in forward order.

    Raises:
        EdgeSeError: the model has no SE block (one line naming the model).
    """
    blocks = find_se_blocks(gm)
    if not blocks:
        raise EdgeSeError(f"--gate-outputs: model {model_name!r} has no SE blocks (no gate to output); "
                          "export it without --gate-outputs")
    return blocks


#: The gate-output layouts (``edge-se export --gate-layout``): :data:`contract.formats.GATE_LAYOUTS`.
LAYOUTS = GATE_LAYOUTS


def with_gate_outputs(gm: GraphModule, blocks: Sequence[SEBlock], *, layout: str = "concat",
                      quantized_outputs: bool = True) -> GraphModule:
    """A copy of ``gm`` returning ``(logits, gates)`` (``concat``) or ``(logits, gate_1, ..., gate_k)``.

    ``gm`` is not modified.

    Args:
        gm: an exported graph (``torch.export.export(...).module()``) or a converted PT2E graph.
        blocks: its SE blocks (:func:`se_blocks`), in the order the gates are appended.
        layout: one of :data:`LAYOUTS` (module docstring).
        quantized_outputs: with ``quantized``, return the int8 gate tensors (a ``.pte``); False keeps
            the dequantised gates in the graph (a ``.tflite``: its converter makes the outputs int8).

    Raises:
        EdgeSeError: an unknown layout, or (``concat``) gates of different ranks.
    """
    import torch
    from torch.utils._pytree import tree_flatten

    if layout not in LAYOUTS:
        raise EdgeSeError(f"--gate-layout {layout!r}: unknown; valid: {', '.join(LAYOUTS)}")

    gm = copy.deepcopy(gm)
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    wanted = gate_inputs(gm, blocks)
    out = next(n for n in graph.nodes if n.op == "output")
    old = out.args[0]
    results: list[Any] = [old[0] if isinstance(old, (tuple, list)) else old]
    with graph.inserting_before(out):
        packed = _packed_int8(graph, [nodes[wanted[b.name]] for b in blocks]) if (
            layout == "concat" and quantized_outputs) else None
        if packed is not None:
            results.append(packed)
        for b in blocks if packed is None else ():
            src = nodes[wanted[b.name]]
            if "dequantize" in str(src.target):
                if layout == "quantized" and quantized_outputs:  # the int8 gate itself (module docstring)
                    src = src.args[0]
                else:  # see the module docstring: a private copy for the output
                    src = graph.call_function(src.target, src.args, dict(src.kwargs))
            results.append(src)
        if layout == "concat" and len(results) > 2:
            ranks = {len(n.meta["val"].shape) for n in results[1:] if "val" in n.meta}
            if len(ranks) > 1:
                raise EdgeSeError(f"--gate-layout concat: the SE gates have different ranks {sorted(ranks)}; "
                                  "use --gate-layout separate")
            results = [results[0], graph.call_function(torch.ops.aten.cat.default, (list(results[1:]), 1))]
    out.args = (tuple(results),)
    codegen: Any = graph._codegen
    if getattr(codegen, "pytree_info", None) is not None:  # export().module() rebuilds its outputs from a spec
        codegen.pytree_info = codegen.pytree_info._replace(out_spec=tree_flatten(tuple(results))[1])
    graph.lint()
    gm.recompile()
    return gm


def gate_grids(sources: Sequence[Any]) -> set[tuple[Any, ...]] | None:
    """The distinct quantisation grids ``(scale, zero point, qmin, qmax, dtype)`` of the gates.

    ``sources`` are the gates' nodes as the multiplies take them: dequantize nodes in an int8 graph.
    None when one is not a dequantize (fp32, an SE block kept in fp32). ``ptq`` on ``.pte`` observes
    each gate's own range (several grids); ``gate-fixed`` puts them all on 1/256 (one).
    """
    grids = set()
    for src in sources:
        if "dequantize_per_tensor" not in str(getattr(src, "target", "")) or len(src.args) < 6:
            return None
        grids.add(tuple(src.args[1:6]))
    return grids


def shared_grid(sources: Sequence[Any]) -> tuple[Any, ...] | None:
    """The one grid every gate is on (:func:`gate_grids`), else None."""
    grids = gate_grids(sources)
    return next(iter(grids)) if grids is not None and len(grids) == 1 else None


def _packed_int8(graph: Any, sources: Sequence[Any]) -> Any | None:
    """One int8 ``[1, sum C_b, 1, 1]`` output of every gate, when all share one grid (None otherwise).

    ``dequantize (a private copy) -> cat -> quantize`` on the shared grid: XNNPACK lowers the pattern
    as one int8 concatenate (its inputs and output must share parameters; with per-gate grids it
    refuses to initialise: measured, ExecuTorch 1.5), so the artifact adds one concatenate and one
    layout transpose for all the gates, instead of an int8 -> fp32 convert per gate (``concat`` on
    different grids) or a transpose per gate (``quantized``); the output is int8 on that grid.
    """
    import torch

    grid = shared_grid(sources)
    if grid is None or len(sources) < 2:
        return None
    copies = [graph.call_function(src.target, src.args, dict(src.kwargs)) for src in sources]
    cat = graph.call_function(torch.ops.aten.cat.default, (copies, 1))
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    return graph.call_function(quantize, (cat, *grid))


def check_stats(stats: Mapping[str, Any], blocks: Sequence[SEBlock], *, where: str) -> None:
    """Raise a one-line :class:`EdgeSeError` naming ``where`` unless ``stats`` fits these SE blocks.

    The stats must be a valid gate-stats dict (:func:`device_bench.gate_score.check_stats`) whose
    ``blocks`` name the same SE blocks, with the same channels, in the same order.
    """
    from device_bench.gate_score import check_stats as check_schema

    try:
        check_schema(stats)
    except ValueError as exc:
        raise EdgeSeError(f"--gate-stats {where}: {exc}") from None
    have = [(str(b.get("name")), int(b.get("channels", -1))) for b in stats["blocks"]]
    want = [(b.name, b.channels) for b in blocks]
    if have != want:
        first = next((i for i, (h, w) in enumerate(zip(have, want, strict=False)) if h != w), min(len(have), len(want)))
        got = have[first] if first < len(have) else "nothing"
        exp = want[first] if first < len(want) else "nothing"
        raise EdgeSeError(f"--gate-stats {where}: fitted for another model or block layout: {len(have)} blocks, "
                          f"this model has {len(want)}; block {first}: stats {got}, model {exp}")


def gate_slots(blocks: Sequence[SEBlock], *, layout: str = "concat") -> list[dict[str, Any]]:
    """Where each block's gate lies: ``[{name, channels, output_index, offset}]`` (offset in channels)."""
    if layout not in LAYOUTS:
        raise EdgeSeError(f"--gate-layout {layout!r}: unknown; valid: {', '.join(LAYOUTS)}")
    slots, offset = [], 0
    for i, b in enumerate(blocks):
        concat = layout == "concat"
        slots.append({"name": b.name, "channels": b.channels, "output_index": 1 if concat else i + 1,
                      "offset": offset if concat else 0})
        offset += b.channels
    return slots


def manifest_block(blocks: Sequence[SEBlock], stats: Mapping[str, Any] | None, *,
                   layout: str = "concat") -> dict[str, Any]:
    """The manifest's ``gate_outputs``: ``{"layout", "blocks": [{name, channels, output_index, offset}], "stats"}``."""
    return {
        "layout": layout,
        "blocks": gate_slots(blocks, layout=layout),
        "stats": None if stats is None else dict(stats),
    }


def _gate_results(gated: GraphModule) -> list[Any]:
    """The graph's outputs after the logits (output 1 onwards): what ``with_gate_outputs`` appended."""
    return list(next(n for n in gated.graph.nodes if n.op == "output").args[0])[1:]


def gate_nodes(gated: GraphModule) -> list[Any]:
    """The graph nodes of the gates, one per block, whatever the layout (the ``cat``'s inputs for ``concat``)."""
    nodes = _gate_results(gated)
    if packed(gated):  # quantize(cat(...)): the cat's inputs are the gates
        nodes = [nodes[0].args[0]]
    if len(nodes) == 1 and "cat" in str(getattr(nodes[0], "target", "")):
        return list(nodes[0].args[0])
    return nodes


def packed(gated: GraphModule) -> bool:
    """Whether ``gated``'s gate output is the packed int8 concatenation (:func:`_packed_int8`)."""
    result = _gate_results(gated)
    return (len(result) == 1 and "quantize_per_tensor" in str(getattr(result[0], "target", ""))
            and "cat" in str(getattr(result[0].args[0], "target", "")))


def gate_quant(gated: GraphModule) -> dict[int, tuple[float, int]]:
    """``{output index: (scale, zero point)}`` of every gate output the graph returns quantised.

    Read from the quantize node each such output is (``quantized``: one per gate; ``concat`` on one
    shared grid: the packed output); empty for float gate outputs.
    """
    out: dict[int, tuple[float, int]] = {}
    for i, node in enumerate(_gate_results(gated), start=1):
        target = str(getattr(node, "target", ""))
        if "quantize_per_tensor" in target and "dequantize" not in target:
            scale, zero = node.args[1], node.args[2]
            if isinstance(scale, (int, float)) and isinstance(zero, int):
                out[i] = (float(scale), int(zero))
    return out


def gate_scales(gated: GraphModule, blocks: Sequence[SEBlock],
                outputs: Sequence[Mapping[str, Any]], *, layout: str = "concat") -> list[float | None]:
    """Each gate's quantisation step: its output's own (int8 ``.tflite``), else the graph's dequantize.

    ``None`` for a gate the graph leaves in float (fp32, or an SE block a policy keeps in fp32).
    """
    nodes = gate_nodes(gated)
    scales: list[float | None] = []
    for slot, node in zip(gate_slots(blocks, layout=layout), nodes, strict=True):
        i = slot["output_index"]
        own = outputs[i].get("scale") if i < len(outputs) else None
        if own is not None:
            scales.append(float(own))
            continue
        scale = node.args[1] if "dequantize" in str(getattr(node, "target", "")) and len(node.args) > 1 else None
        scales.append(float(scale) if isinstance(scale, (int, float)) else None)
    return scales


__all__ = ["LAYOUTS", "check_stats", "gate_nodes", "gate_quant", "gate_scales", "gate_slots", "gate_grids",
           "manifest_block", "packed", "se_blocks", "shared_grid", "with_gate_outputs"]
