"""Delegation and partition report of an artifact, read from the ``.tflite``/``.pte`` file itself.

For every artifact: how many delegate partitions the runtime makes (1 = the whole graph in
XNNPACK), which operators are left outside the delegate, and, for int8 artifacts, which operators
still compute in float inside the int8 graph (the "float islands" between dequantize and
quantize that cost int8 its speed).

The summaries are pure functions over plain data (op names and tensor dtypes); two small readers
produce that data:
    * ``.tflite``: LiteRT (``ai_edge_litert``) loads the model with its default XNNPACK delegate;
      its node list then holds every original operator (tensor ids and dtypes) plus one
      ``DELEGATE`` node per partition, and the data flow tells which operators run outside
      (:func:`nodes_outside_delegate`);
    * ``.pte``: ExecuTorch's program deserialiser (instructions: ``DelegateCall`` = one partition,
      ``KernelCall`` = an operator in the portable/optimized kernels) and, for each XNNPACK
      payload, its ``XNNGraph`` flatbuffer decoded with the schema ExecuTorch ships (node types and
      value datatypes).
Neither reader needs TensorFlow; the ``.pte`` reader needs executorch (main venv only). ``edge-se
export`` writes the report into every manifest (``partitions``); ``make bench-peers`` reads it
from every artifact, peers included.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TFLITE_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
"""TFLite ops that move between float and int8: the edges of a float island, not its work."""

PTE_BOUNDARY_NODES = frozenset({"XNNConvert"})
"""XNNPACK nodes that move between float and quantised values."""

PTE_LAYOUT_NODES = frozenset({"XNNStaticTranspose", "XNNStaticReshape"})
"""XNNPACK nodes that only move data (no arithmetic): not counted as float compute."""

FLOAT_DTYPES = frozenset({"float32", "float16", "xnn_datatype_fp32", "xnn_datatype_fp16"})


@dataclass(frozen=True)
class OpInfo:
    """One operator of a graph: its name, tensor ids and the dtypes of its input and output tensors."""

    name: str
    input_dtypes: tuple[str, ...] = ()
    output_dtypes: tuple[str, ...] = ()
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()


def float_ops(ops: Iterable[OpInfo], *, boundary: frozenset[str] = TFLITE_BOUNDARY_OPS,
              ignore: frozenset[str] = frozenset()) -> dict[str, int]:
    """Operators computing in float: a float output, not a quantize/dequantize boundary.

    In an int8 graph these are the float islands (e.g. ``DEQUANTIZE -> LOGISTIC -> QUANTIZE``:
    LOGISTIC counts). In an fp32 graph every operator counts, so callers ask only for int8.

    Args:
        ops: every operator of the graph (delegated or not).
        boundary: op names that convert between float and int8 (not counted).
        ignore: op names that only move data (not counted).

    Returns:
        ``{op name: count}``, sorted by name.
    """
    hist = Counter(op.name for op in ops if op.name not in boundary and op.name not in ignore
                   and any(d in FLOAT_DTYPES for d in op.output_dtypes))
    return dict(sorted(hist.items()))


def nodes_outside_delegate(nodes: Sequence[OpInfo], graph_outputs: Iterable[int]) -> list[int]:
    """Indices of the original nodes LiteRT still runs itself after delegation.

    LiteRT keeps the replaced nodes in its node list and appends one ``DELEGATE`` node per
    partition; only the execution plan (not exposed to Python) says which run. It follows from
    the data flow: walking back from the graph outputs and the ``DELEGATE`` nodes' inputs, a
    tensor a ``DELEGATE`` node produces ends the walk; any other tensor's producer is a node that
    runs outside the delegate, and its own inputs are walked in turn. Tensors inside a partition
    are never reached (only delegated nodes consume them).

    Args:
        nodes: the node list as LiteRT reports it after delegation (tensor ids in ``inputs`` /
            ``outputs``), original nodes and ``DELEGATE`` nodes alike.
        graph_outputs: tensor ids of the model's outputs.

    Returns:
        Sorted indices into ``nodes`` of the non-``DELEGATE`` nodes that run outside the delegate.
    """
    delegated_out = {t for n in nodes if n.name == "DELEGATE" for t in n.outputs}
    producer = {t: i for i, n in enumerate(nodes) if n.name != "DELEGATE" for t in n.outputs}
    todo = [*graph_outputs, *(t for n in nodes if n.name == "DELEGATE" for t in n.inputs)]
    seen: set[int] = set()
    outside: set[int] = set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in delegated_out or t not in producer:
            continue  # made by a partition, or a graph input / constant
        i = producer[t]
        if i not in outside:
            outside.add(i)
            todo.extend(nodes[i].inputs)
    return sorted(outside)


def summarize_tflite(nodes: Sequence[OpInfo], graph_outputs: Sequence[int], *, dtype: str) -> dict[str, Any]:
    """Partition report of a ``.tflite`` from LiteRT's node list after delegation.

    Args:
        nodes: every node LiteRT lists after applying its default XNNPACK delegate: the original
            operators (with tensor ids and dtypes) followed by one ``DELEGATE`` node per partition.
        graph_outputs: tensor ids of the model's outputs.
        dtype: ``int8`` or ``fp32`` (float islands are reported for int8 only).

    Returns:
        ``partitions`` (DELEGATE nodes), ``ops_outside_delegate`` {op: count}, ``ops`` {op: count}
        and ``ops_total`` (original operators), ``float_ops_in_int8`` {op: count} over all original
        operators (int8 only, else ``None``), ``quant_boundaries`` (QUANTIZE + DEQUANTIZE nodes),
        ``single_partition`` (one partition and nothing outside it).
    """
    original = [n for n in nodes if n.name != "DELEGATE"]
    partitions = len(nodes) - len(original)
    outside = Counter(nodes[i].name for i in nodes_outside_delegate(nodes, graph_outputs))
    return {
        "kind": "tflite",
        "partitions": partitions,
        "single_partition": partitions == 1 and not outside,
        "ops_outside_delegate": dict(sorted(outside.items())),
        "ops": dict(sorted(Counter(n.name for n in original).items())),
        "ops_total": len(original),
        "float_ops_in_int8": float_ops(original) if dtype == "int8" else None,
        "quant_boundaries": sum(op.name in TFLITE_BOUNDARY_OPS for op in original),
    }


def summarize_pte(instructions: Sequence[tuple[str, str]], delegate_graphs: Sequence[Sequence[OpInfo]], *,
                  dtype: str) -> dict[str, Any]:
    """Partition report of a ``.pte`` from its instructions and its XNNPACK graphs.

    Args:
        instructions: ``("delegate", backend id)`` per ``DelegateCall`` and ``("kernel", op)``
            per ``KernelCall``, in program order (other instruction kinds left out).
        delegate_graphs: per XNNPACK payload, its nodes (type and value datatypes).
        dtype: ``int8`` or ``fp32`` (float islands are reported for int8 only).

    Returns:
        ``partitions`` (delegate calls), ``ops_outside_delegate`` {operator: count} (kernel calls;
        ``dim_order_ops::_to_dim_order_copy`` on constants is among them),
        ``delegated_nodes`` {XNNPACK node: count}, ``float_ops_in_int8`` {node: count} (int8 only),
        ``quant_boundaries`` (XNNConvert nodes), ``single_partition``.
    """
    partitions = sum(kind == "delegate" for kind, _ in instructions)
    outside = Counter(name for kind, name in instructions if kind == "kernel")
    nodes = [n for g in delegate_graphs for n in g]
    return {
        "kind": "pte",
        "partitions": partitions,
        "single_partition": partitions == 1,
        "ops_outside_delegate": dict(sorted(outside.items())),
        "delegated_nodes": dict(sorted(Counter(n.name for n in nodes).items())),
        "float_ops_in_int8": (float_ops(nodes, boundary=PTE_BOUNDARY_NODES, ignore=PTE_LAYOUT_NODES)
                              if dtype == "int8" else None),
        "quant_boundaries": sum(n.name in PTE_BOUNDARY_NODES for n in nodes),
    }


def ops_text(ops: dict[str, int]) -> str:
    """``{"HARD_SWISH": 14, "MUL": 2}`` -> ``"HARD_SWISH x14, MUL x2"`` (the dict's order; reports are sorted)."""
    return ", ".join(f"{k} x{v}" for k, v in ops.items())


def op_histogram(report: dict[str, Any]) -> dict[str, int]:
    """Every operator of an artifact by name.

    tflite: its ``ops``; pte: ``delegated_nodes`` plus ``ops_outside_delegate``.
    """
    hist: Counter[str] = Counter(report.get("ops") or report.get("delegated_nodes") or {})
    if "ops" not in report:
        hist.update(report.get("ops_outside_delegate") or {})
    return dict(sorted(hist.items()))


def op_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Operators one artifact has more (``+``) or fewer (``-``) of than another, e.g. ``+PAD x5, -MUL x2``.

    The operator-level answer to "why is this one slower": two graphs with the same operators
    differ only in shapes and quantisation parameters.
    """
    a, b = Counter(op_histogram(ours)), Counter(op_histogram(theirs))
    more, fewer = a - b, b - a
    parts = [f"+{k} x{v}" for k, v in sorted(more.items())] + [f"-{k} x{v}" for k, v in sorted(fewer.items())]
    return ", ".join(parts) or "the same operators"


def xnn_graph_ops(graph: dict[str, Any]) -> list[OpInfo]:
    """Nodes of a decoded ``XNNGraph`` (flatc JSON) with the datatypes of their values.

    A node's inputs are its ``*_id`` fields other than ``output_id`` (``input_id``, ``input1_id``,
    ``filter_id``, ``bias_id``...); list-valued ``*_ids`` fields count too.
    """
    dtypes: dict[int, str] = {}
    for value in graph.get("xvalues", []):
        body = value.get("xvalue_union", {})
        tensor = body.get("tensor_value", body)  # XNNQuantizedTensorValue wraps an XNNTensorValue
        dtypes[int(tensor.get("id_out", -1))] = str(tensor.get("datatype", "?"))
    ops = []
    for node in graph.get("xnodes", []):
        body = node.get("xnode_union", {})
        ins: list[str] = []
        outs: list[str] = []
        for key, val in body.items():
            ids = val if isinstance(val, list) else [val]
            if key in ("output_id", "output1_id", "output2_id", "output3_id", "output4_id", "output_ids"):
                outs += [dtypes.get(int(i), "?") for i in ids]
            elif key.endswith("_id") or key.endswith("_ids"):
                ins += [dtypes.get(int(i), "?") for i in ids]
        ops.append(OpInfo(str(node.get("xnode_union_type", "?")), tuple(ins), tuple(outs)))
    return ops


# --- readers (I/O) -------------------------------------------------------------------------------


def read_tflite(path: str | os.PathLike[str]) -> tuple[list[OpInfo], list[int]]:
    """LiteRT's node list after its default XNNPACK delegate was applied, and the graph's output ids.

    Raises:
        ValueError: LiteRT cannot load the file (the message names it).
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: LiteRT cannot load the model: {exc}") from None
    dtypes = {int(t["index"]): np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    nodes = []
    for op in it._get_ops_details():  # noqa: SLF001 - the only view of the node list LiteRT offers
        ins = tuple(int(i) for i in op["inputs"] if i >= 0)
        outs = tuple(int(i) for i in op["outputs"] if i >= 0)
        nodes.append(OpInfo(str(op["op_name"]), tuple(dtypes.get(i, "?") for i in ins),
                            tuple(dtypes.get(i, "?") for i in outs), ins, outs))
    return nodes, [int(d["index"]) for d in it.get_output_details()]


def _decode_xnn_graph(payload: bytes) -> dict[str, Any]:
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader, _get_schema_bytes
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(payload[: XNNHeader.EXPECTED_LENGTH])
    flatbuffer = payload[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size]
    with tempfile.TemporaryDirectory(prefix="edge_se_xnn_") as tmp:
        Path(tmp, "schema.fbs").write_bytes(_get_schema_bytes())
        Path(tmp, "graph.bin").write_bytes(flatbuffer)
        _flatc_decompile(tmp, str(Path(tmp, "schema.fbs")), str(Path(tmp, "graph.bin")), ["--raw-binary"])
        text = Path(tmp, "graph.json").read_text()
    # flatc writes non-finite floats (output_max of a ReLU) as bare inf/nan, which JSON lacks.
    return json.loads(re.sub(r"(:\s*)(-?)(inf|nan)\b", r'\1"\2\3"', text))


def read_pte(path: str | os.PathLike[str]) -> tuple[list[tuple[str, str]], list[list[OpInfo]]]:
    """Instructions of the ``forward`` plan and the decoded nodes of each XNNPACK payload.

    Raises:
        ValueError: the file is not an ExecuTorch program (the message names it).
    """
    from executorch.exir._serialize._program import _extract_delegate_payload, deserialize_pte_binary

    data = Path(path).read_bytes()
    try:
        program = deserialize_pte_binary(data).program
    except Exception as exc:  # noqa: BLE001 - the deserialiser raises many types on a bad file
        raise ValueError(f"{path}: not a readable ExecuTorch program: {exc}") from None
    plans = {p.name: p for p in program.execution_plan}
    plan = plans.get("forward", program.execution_plan[0])
    instructions: list[tuple[str, str]] = []
    for chain in plan.chains:
        for ins in chain.instructions:
            args = ins.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                op = plan.operators[args.op_index]
                instructions.append(("kernel", f"{op.name}.{op.overload}" if op.overload else op.name))
            elif kind == "DelegateCall":
                instructions.append(("delegate", plan.delegates[args.delegate_index].id))
    graphs = []
    xnn = [d for d in plan.delegates if "xnnpack" in d.id.lower()]
    for k in range(len(xnn)):
        payload = _extract_delegate_payload(data, "XnnpackBackend", k)
        if payload is not None:
            graphs.append(xnn_graph_ops(_decode_xnn_graph(payload)))
    return instructions, graphs


def tflite_report(path: str | os.PathLike[str], dtype: str | None = None) -> dict[str, Any]:
    """:func:`summarize_tflite` of a file; ``dtype`` defaults to int8 when the graph holds int8 tensors."""
    nodes, outputs = read_tflite(path)
    if dtype is None:
        dtype = "int8" if any(d == "int8" for op in nodes for d in op.output_dtypes) else "fp32"
    return summarize_tflite(nodes, outputs, dtype=dtype)


def pte_report(path: str | os.PathLike[str], dtype: str | None = None) -> dict[str, Any]:
    """:func:`summarize_pte` of a file; ``dtype`` defaults to int8 when XNNPACK holds quantised values."""
    instructions, graphs = read_pte(path)
    if dtype is None:
        dtype = "int8" if any("qint8" in d or "qcint8" in d for g in graphs for n in g for d in n.output_dtypes) \
            else "fp32"
    return summarize_pte(instructions, graphs, dtype=dtype)


REPORTS: dict[str, Callable[[str | os.PathLike[str], str | None], dict[str, Any]]] = {
    "tflite": tflite_report,
    "pte": pte_report,
}
"""The file readers by extension (which is also the format name). The exporter reads a report through
its backend (``export.backends``); this table serves the peers' venv, which has no backends."""


def report_bytes(data: bytes, fmt: str, dtype: str | None = None) -> dict[str, Any]:
    """The partition report of an artifact held in memory (``fmt``: a key of :data:`REPORTS`)."""
    if fmt not in REPORTS:
        raise ValueError(f"cannot report on format {fmt!r}; valid: {', '.join(REPORTS)}")
    with tempfile.TemporaryDirectory(prefix="edge_se_partitions_") as tmp:
        path = Path(tmp) / f"artifact.{fmt}"
        path.write_bytes(data)
        return REPORTS[fmt](path, dtype)


def report(path: str | os.PathLike[str], dtype: str | None = None) -> dict[str, Any]:
    """The partition report of a file by its extension (a key of :data:`REPORTS`, e.g. ``.tflite``).

    Raises:
        ValueError: another extension (naming the valid ones) or an unreadable file.
    """
    suffix = Path(path).suffix
    reader = REPORTS.get(suffix[1:]) if suffix else None
    if reader is None:
        valid = ", ".join(f".{k}" for k in REPORTS)
        raise ValueError(f"{path}: cannot report on {suffix or 'no extension'!r}; valid: {valid}")
    return reader(path, dtype)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.peers.partitions FILE...``: one JSON line per artifact."""
    import sys

    paths = list(argv if argv is not None else sys.argv[1:])
    if not paths:
        print("usage: python -m benchmarks.peers.partitions ARTIFACT.(tflite|pte)...", file=sys.stderr)
        return 2
    status = 0
    for p in paths:
        try:
            print(json.dumps({"artifact": str(p), **report(p)}), flush=True)
        except (ValueError, OSError) as exc:
            print(f"partitions: error: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
