"""ExecuTorch ``.pte`` with the XNNPACK delegate: lower, summarise delegation, run in the runtime.

The ``pte`` backend (:class:`PteBackend`, registered on import) of :mod:`export.backends`.

``torch.export`` -> (graph rewrites) -> ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
-> ``to_executorch()``. The converters are imported inside the functions, so importing this
module costs nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from contract.errors import ContractError
from edge_se.errors import EdgeSeError, StageError, first_line
from export.backends import register
from export.backends.base import Artifact, Backend, Lowered, graph_output_scale, on_disk
from export.fx_provenance import shared_provenance
from export.xnnpack_anchored_passes import anchored_passes_only

if TYPE_CHECKING:
    from quantize.core import QuantizedModel

# Ops that only move data between a delegate and the program (no arithmetic).
_PLUMBING = {"getitem", "executorch_call_delegate"}
# The gate functions of an SE block (edge_se.blocks.make_gate) as they appear after lowering.
_GATE_OPS = ("sigmoid", "hardsigmoid", "softmax", "_softmax", "clamp", "hardtanh", "div", "mul", "add")


def op_name(target: Any) -> str:
    """A stable operator name such as ``aten.convolution.default`` for an FX node target."""
    name = getattr(target, "name", None)
    if callable(name):
        try:
            text = str(name())  # torch OpOverload / EdgeOpOverload: "aten::convolution.default"
            return text.replace("::", ".")
        except Exception:  # noqa: BLE001 - some targets have an unrelated name() signature
            pass
    return getattr(target, "__name__", str(target))


def rewrite_head_mean(ep: torch.export.ExportedProgram) -> list[str]:
    """Make ``mean.dim(x, [2, 3], keepdim=False)`` on 4-D ``x`` delegable: ``mean(keepdim=True)`` + view.

    XNNPACK lowers ``mean.dim`` only as global average pooling with ``keepdim=True``; the heads
    of every family pool with ``x.mean((2, 3))``, which would otherwise run in the portable
    kernels between two delegate partitions. The rewrite is exact (same sum, same divisor), and
    it is :mod:`quantize.int8_ops`'s ``head-mean`` (an int8 graph arrives here already rewritten).

    Returns:
        One description per rewritten node (empty when nothing matched).
    """
    from quantize.int8_ops import rewrite_head_means

    return [f"{name}: mean.dim(keepdim=False) -> mean.dim(keepdim=True) + view"
            for name in rewrite_head_means(ep.graph_module)]


def _module_path(node: torch.fx.Node) -> tuple[str, str]:
    """(deepest module path, its type string) from the node's ``nn_module_stack``, or ('', '')."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, typ = list(stack.values())[-1]
    return str(path), str(typ)


def _in_se(node: torch.fx.Node) -> bool | None:
    """Whether the node belongs to an SE block; ``None`` when the graph lost its module stack."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    for path, typ in stack.values():
        if "SqueezeExcite" in str(typ) or str(path).split(".")[-1:] == ["se"] or ".se." in f".{path}.":
            return True
    return False


def _is_constant(node: torch.fx.Node, constants: set[str]) -> bool:
    """True when every tensor input is a parameter, buffer or lifted constant (no data flows in)."""
    inputs = [a for a in node.all_input_nodes]
    return bool(inputs) and all(a.op == "placeholder" and a.name in constants for a in inputs)


def delegation_summary(edge_program: Any) -> dict[str, Any]:
    """Count operators inside and outside the XNNPACK delegate, by operator name.

    Operators outside the delegate are split into ``se`` (inside an SE block: the gates the
    quantizer leaves in float are expected here), ``constant`` (acting only on weights or lifted
    constants, e.g. a 0-d scalar's dim-order copy) and ``other`` (real work on activations in
    the portable kernels: each gets a warning).
    """
    ep = edge_program.exported_program()
    gm = ep.graph_module
    sig = ep.graph_signature
    user_inputs = set(sig.user_inputs)
    constants = {n.name for n in gm.graph.nodes if n.op == "placeholder" and n.name not in user_inputs}
    delegated: Counter[str] = Counter()
    outside: dict[str, Counter[str]] = {"se": Counter(), "constant": Counter(), "other": Counter()}
    partitions = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            lowered = getattr(gm, node.target)
            partitions += 1
            for inner in lowered.original_module.graph_module.graph.nodes:
                if inner.op == "call_function":
                    name = op_name(inner.target)
                    if name.split(".")[-1] not in _PLUMBING and name not in _PLUMBING:
                        delegated[name] += 1
        elif node.op == "call_function":
            name = op_name(node.target)
            if name in _PLUMBING or "executorch_call_delegate" in name:
                continue
            in_se = _in_se(node)
            if in_se is None:  # module stack lost: recognise the gate by its operator
                in_se = any(name.split(".")[1:2] == [g] for g in _GATE_OPS) and not _is_constant(node, constants)
            kind = "constant" if _is_constant(node, constants) else ("se" if in_se else "other")
            outside[kind][name] += 1
    n_in = sum(delegated.values())
    n_work = n_in + sum(outside["se"].values()) + sum(outside["other"].values())
    warnings = [
        f"{count} x {name} runs outside the XNNPACK delegate (portable kernels)"
        for name, count in sorted(outside["other"].items())
    ]
    return {
        "backend": "XnnpackBackend",
        "partitions": partitions,
        "delegated_ops": dict(sorted(delegated.items())),
        "non_delegated_ops": {k: dict(sorted(v.items())) for k, v in outside.items()},
        "delegated": n_in,
        "non_delegated": n_work - n_in,
        "delegated_share": n_in / n_work if n_work else 0.0,
        "fully_delegated": not outside["other"] and not outside["se"],
        "warnings": warnings,
    }


INT8_PARTITIONER_OPS: tuple[str, ...] = ("sigmoid", "hardswish")
"""Operators XNNPACK runs in int8 (``xnn_define_sigmoid``/``hardswish`` take qint8 tensors) that
ExecuTorch 1.5's partitioner configs list as fp32-only, so an int8 one would be left outside."""


def int8_partitioner_configs() -> list[type]:
    """XNNPACK's partitioner configs, with :data:`INT8_PARTITIONER_OPS` also taken in static int8.

    ExecuTorch's ``SigmoidConfig`` and ``HardswishConfig`` declare only ``FP32``: an int8
    ``dequantize -> sigmoid -> quantize`` would not be partitioned at all. XNNPACK itself has int8
    kernels for both (a sigmoid's output must be quantised with scale 1/256 and zero point -128,
    which :mod:`quantize.int8_ops` arranges), and the node visitors define each tensor with the
    quantisation parameters of its neighbouring Q/DQ nodes, so only the precision list changes.
    The export parity check runs every such artifact in the runtime before it is written.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType

    def widened(base: type) -> type:
        def supported_precision_types(self: Any) -> list[Any]:
            return [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]

        return type(f"Int8{base.__name__}", (base,), {"supported_precision_types": supported_precision_types})

    out = []
    for cfg in ALL_PARTITIONER_CONFIGS:
        name = getattr(cfg, "target_name", "").split(".")[0]
        out.append(widened(cfg) if name in INT8_PARTITIONER_OPS else cfg)
    return out


def _constant_copies(ep: Any) -> int:
    """``_to_dim_order_copy`` nodes left outside the delegate (in a lowered program, only constants feed them)."""
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and "_to_dim_order_copy" in str(n.target))


def fold_constant_copies(edge: Any) -> tuple[Any, int]:
    """Fold the dtype/dim-order copies of constants that lowering leaves outside the XNNPACK delegate.

    ``nn.Hardsigmoid`` (every MobileNetV3 SE gate) decomposes to ``clamp(x + 3, 0, 6) / 6``; the
    edge dialect lifts the 3 and the 6 as tensor constants, each behind a ``_to_dim_order_copy``
    that the delegate does not take, so every inference ran 2 portable kernels per SE block outside
    XNNPACK (18 in MobileNetV3-Small). Their inputs are constants, so ExecuTorch's constant
    propagation (told not to skip dim-order ops) computes them once, at export; the outputs are
    unchanged (the same copy, done earlier).

    Returns:
        ``(program manager, copies folded)``; the manager is ``edge`` itself when there were none.
    """
    from executorch.exir import EdgeProgramManager
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    before = _constant_copies(edge.exported_program())
    if not before:
        return edge, 0
    folded = constant_prop_pass(edge.exported_program(), _skip_dim_order=False)
    after = _constant_copies(folded)
    if after >= before:
        return edge, 0
    return EdgeProgramManager(folded, compile_config=edge.compile_config), before - after


def lower_pte(
    module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *, int8_ops: bool = False
) -> tuple[bytes, dict[str, Any], list[str]]:
    """Export ``module`` and lower it to an XNNPACK-delegated ExecuTorch program.

    Args:
        module: an eval-mode model or a converted PT2E graph (int8).
        example_inputs: the inputs to trace with (batch 1, the artifact's fixed shape).
        int8_ops: partition with :func:`int8_partitioner_configs` (int8 sigmoid and hard-swish).

    Returns:
        ``(pte bytes, delegation summary, rewrites applied)``.

    Raises:
        EdgeSeError: the exporter or the lowering rejected an operator (its message kept).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        # ~17% of the lowering's time otherwise (export/fx_provenance.py); 5 s of pattern tracing per
        # process and up to nine whole-program re-traces per lowering (export/xnnpack_anchored_passes.py)
        with shared_provenance(), anchored_passes_only():
            ep = torch.export.export(module, example_inputs, strict=False)
            rewrites = rewrite_head_mean(ep)
            if int8_ops:
                rewrites.append(f"partitioner: XNNPACK takes int8 {', '.join(INT8_PARTITIONER_OPS)}")
            configs = int8_partitioner_configs() if int8_ops else None
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner(configs=configs)])
            edge, folded = fold_constant_copies(edge)
            if folded:
                rewrites.append(f"constant-fold: {folded} dim-order copies of constants (kernels outside the delegate)")
            summary = delegation_summary(edge)
            buffer = edge.to_executorch().buffer
    except ContractError:  # bad input found on the way (EdgeSeError is one): not a lowering failure
        raise
    except Exception as exc:  # noqa: BLE001 - the converters raise many types; keep the message
        raise StageError("lower (ExecuTorch/XNNPACK)", first_line(exc)) from exc
    return bytes(buffer), summary, rewrites


def _load_method(data: bytes | str | os.PathLike[str]) -> Any:
    from executorch.runtime import Runtime

    src: bytes | str = data if isinstance(data, bytes) else str(Path(data))
    try:
        program = Runtime.get().load_program(src)
        method = program.load_method("forward")
    except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError on bad files
        raise EdgeSeError(f"ExecuTorch runtime cannot load the program: {first_line(exc)}") from None
    if method is None:
        raise EdgeSeError("ExecuTorch program has no 'forward' method")
    return method


# ExecuTorch ScalarType codes (c10 numbering) and names -> numpy dtype names.
_ET_DTYPES = {"0": "uint8", "1": "int8", "2": "int16", "3": "int32", "4": "int64", "5": "float16", "6": "float32",
              "7": "float64", "11": "bool", "Byte": "uint8", "Char": "int8", "Short": "int16", "Int": "int32",
              "Long": "int64", "Half": "float16", "Float": "float32", "Double": "float64", "Bool": "bool"}


def pte_io(data: bytes | str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The program's input and output tensors as ``[{shape, dtype}]`` lists, from the runtime's metadata."""
    meta = _load_method(data).metadata

    def info(t: Any) -> dict[str, Any]:
        code = t.dtype()
        key = str(int(code)) if isinstance(code, int) else str(code).split(".")[-1]
        return {"shape": [int(s) for s in t.sizes()], "dtype": _ET_DTYPES.get(key, key.lower())}

    ins = [info(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
    outs = [info(meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]
    return ins, outs


def run_pte_all(data: bytes | str | os.PathLike[str], inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Run ``forward`` once per input array (each the whole input tensor); return every output of each run."""
    method = _load_method(data)
    outs = []
    for x in inputs:
        try:
            result = method.execute([torch.from_numpy(np.ascontiguousarray(x))])
        except Exception as exc:  # noqa: BLE001 - a bad input shape surfaces as a RuntimeError
            raise StageError("run (ExecuTorch)", first_line(exc)) from None
        outs.append([r.detach().numpy().copy() for r in result])
    return outs


def run_pte(data: bytes | str | os.PathLike[str], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``forward`` once per input array (each the whole input tensor); return output 0 of each run."""
    return [run[0] for run in run_pte_all(data, inputs)]


class PteBackend(Backend):
    """ExecuTorch ``.pte``, XNNPACK-delegated; NCHW float input and output in both dtypes."""

    name = "pte"

    def lower(self, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
              quantized: QuantizedModel | None, layout: str) -> Lowered:
        """:func:`lower_pte`; int8 graphs quantised with ``int8-ops`` get :func:`int8_partitioner_configs`."""
        int8_ops = quantized is not None and "int8-ops" in quantized.int8_rewrites
        data, summary, rewrites = lower_pte(module, example_inputs, int8_ops=int8_ops)
        return Lowered(data, delegation=summary, rewrites=rewrites, warnings=list(summary["warnings"]))

    def io(self, artifact: Artifact) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:func:`pte_io`."""
        return pte_io(artifact)

    def tensor_specs(self, artifact: Artifact, *, layout: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Input ``x`` and outputs ``output_{i}``; no quantisation parameters (the program takes and gives float)."""
        ins, outs = pte_io(artifact)
        in_specs = [{"name": "x", **ins[0], "layout": layout, "scale": None, "zero_point": None}]
        out_specs = [{"name": f"output_{i}", **o, "scale": None, "zero_point": None} for i, o in enumerate(outs)]
        return in_specs, out_specs

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:func:`run_pte`."""
        return run_pte(artifact, inputs)

    def run_all(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """:func:`run_pte_all`."""
        return run_pte_all(artifact, inputs)

    def partitions(self, artifact: Artifact, dtype: str | None = None) -> dict[str, Any]:
        """:func:`export.partitions.pte_report` of the program."""
        from export.partitions import pte_report

        with on_disk(artifact, self.spec.ext) as path:
            return pte_report(path, dtype)

    def delegation(self, lowered: Lowered, partitions: dict[str, Any]) -> dict[str, Any]:
        """:func:`delegation_summary` of the edge program, made while lowering."""
        if lowered.delegation is None:
            raise EdgeSeError("a .pte delegation summary is made while lowering; this lowering has none")
        return lowered.delegation

    def output_scale(self, outputs: Sequence[dict[str, Any]], reference: Any) -> float | None:
        """Float outputs: the step of the PT2E reference graph's final dequantize."""
        return graph_output_scale(reference)


register(PteBackend())

__all__ = ["INT8_PARTITIONER_OPS", "PteBackend", "delegation_summary", "int8_partitioner_configs", "lower_pte",
           "op_name", "pte_io", "rewrite_head_mean", "run_pte", "run_pte_all"]
