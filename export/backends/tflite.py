"""TFLite ``.tflite`` through litert-torch, run in LiteRT (``ai_edge_litert``).

fp32: ``litert_torch.convert(model, inputs)``. int8: the converted PT2E graph with
``quant_config=QuantConfig(pt2e_quantizer=...)`` gives a full-integer model whose input and
output tensors are int8; callers quantise inputs and dequantise outputs with the model's own
scale and zero point (:func:`tflite_io`, :func:`run_tflite`). Outputs are mapped by index from
the signature (LiteRT lists 10+ outputs in name order: ``output_10`` before ``output_2``).

The ``tflite`` backend (:class:`TfliteBackend`, registered on import) of :mod:`export.backends`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edge_se.errors import EdgeSeError, StageError, first_line
from export.backends import register
from export.backends.base import Artifact, Backend, Lowered, on_disk

if TYPE_CHECKING:
    from quantize.core import QuantizedModel


def convert_tflite(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    quantizer: Any = None,
    channels_last: bool = False,
) -> bytes:
    """Convert ``module`` to a ``.tflite`` flatbuffer (bytes; nothing is written to the output folder).

    Args:
        module: an eval-mode model (fp32) or a converted PT2E graph (int8).
        example_inputs: NCHW inputs to trace with (batch 1).
        quantizer: the PT2E quantizer the graph was quantised with (int8 only).
        channels_last: take NHWC input (a transpose folded into the graph by the converter).

    Raises:
        EdgeSeError: the converter rejected the model (its first message line kept).
    """
    import litert_torch

    kwargs: dict[str, Any] = {}
    if quantizer is not None:
        from litert_torch.quantize.quant_config import QuantConfig

        kwargs["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    args = example_inputs
    if channels_last:
        module = litert_torch.to_channel_last_io(module, args=[0])
        args = tuple(x.permute(0, 2, 3, 1).contiguous() for x in example_inputs)
    try:
        # The converter prints progress on stdout; stdout is reserved for JSON results.
        with contextlib.redirect_stdout(io.StringIO()):
            model = litert_torch.convert(module, args, **kwargs)
            with tempfile.TemporaryDirectory(prefix="edge_se_tflite_") as tmp:
                path = Path(tmp) / "model.tflite"
                model.export(str(path))
                data = path.read_bytes()
    except Exception as exc:  # noqa: BLE001 - the converter raises many types; keep its message
        raise StageError("convert (litert-torch)", first_line(exc)) from exc
    return data


def _interpreter(data: bytes | str | os.PathLike[str]) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        if isinstance(data, bytes):
            it = Interpreter(model_content=data)
        else:
            it = Interpreter(model_path=str(data))
        it.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer raises ValueError/RuntimeError
        raise EdgeSeError(f"LiteRT cannot load the model: {first_line(exc)}") from None
    return it


def _signature(it: Any) -> tuple[str, list[str], list[str]]:
    sigs = it.get_signature_list()
    if not sigs:
        raise EdgeSeError("LiteRT model has no signature")
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    return key, list(sigs[key]["inputs"]), list(sigs[key]["outputs"])


def _index_key(name: str) -> tuple[int, str]:
    # "output_10" -> (10, ...): the converter numbers outputs in their order in the graph.
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 0, name)


def _tensor_info(name: str, detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    quantized = np.dtype(detail["dtype"]).kind in "iu" and scale != 0.0
    return {
        "name": name,
        "shape": [int(s) for s in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale) if quantized else None,
        "zero_point": int(zero_point) if quantized else None,
    }


def tflite_io(data: bytes | str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of the default signature: ``[{name, shape, dtype, scale, zero_point}]``.

    Outputs are in index order (``output_0``, ``output_1``, ..., ``output_10``), not name order.
    """
    it = _interpreter(data)
    key, in_names, out_names = _signature(it)
    runner = it.get_signature_runner(key)
    in_det, out_det = runner.get_input_details(), runner.get_output_details()
    ins = [_tensor_info(n, in_det[n]) for n in sorted(in_names, key=_index_key)]
    outs = [_tensor_info(n, out_det[n]) for n in sorted(out_names, key=_index_key)]
    return ins, outs


def quantize_array(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """``clip(round(x / scale) + zero_point)`` in ``dtype``'s range (the manifest's rule)."""
    info = np.iinfo(np.dtype(dtype))
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize_array(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32."""
    return ((q.astype(np.int32) - zero_point) * scale).astype(np.float32)


def run_tflite_all(data: bytes | str | os.PathLike[str], inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Run the default signature once per float input; return every output of each run as float32.

    Quantised inputs and outputs are converted with the model's own scale and zero point, read
    from the interpreter, so the caller always works in float. Outputs are in index order.
    """
    it = _interpreter(data)
    key, in_names, out_names = _signature(it)
    runner = it.get_signature_runner(key)
    ins, outs = tflite_io(data)
    results = []
    for x in inputs:
        spec = ins[0]
        arr = np.asarray(x, dtype=np.float32)
        if list(arr.shape) != spec["shape"]:
            raise EdgeSeError(f"LiteRT input {spec['name']!r} takes shape {spec['shape']}, got {list(arr.shape)}")
        if spec["scale"] is not None:
            arr = quantize_array(arr, float(spec["scale"]), int(spec["zero_point"]), str(spec["dtype"]))
        try:
            out = runner(**{str(spec["name"]): arr})
        except Exception as exc:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError
            raise StageError("run (LiteRT)", first_line(exc)) from None
        run = []
        for o in outs:
            y = np.asarray(out[str(o["name"])])
            if o["scale"] is not None:
                y = dequantize_array(y, float(o["scale"]), int(o["zero_point"]))
            run.append(y.astype(np.float32))
        results.append(run)
    return results


def run_tflite(data: bytes | str | os.PathLike[str], inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the default signature once per float input; return output 0 of each run as float32 (dequantised)."""
    return [run[0] for run in run_tflite_all(data, inputs)]


def delegation_from_report(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``delegation`` block from an :mod:`export.partitions` report of the model.

    LiteRT applies its default XNNPACK delegate when it allocates tensors; each partition it takes
    becomes one ``DELEGATE`` node. One partition means the whole graph runs in XNNPACK; many (e.g.
    int8 HARD_SWISH, which LiteRT 2.3's XNNPACK does not take) mean the graph is cut and the pieces
    between run in LiteRT's reference kernels. A report that failed gives ``ops: {}``,
    ``partitions: None``.
    """
    return {
        "backend": "litert-xnnpack (default delegate, applied at load time)",
        "ops": dict(report.get("ops") or {}),
        "partitions": report.get("partitions"),
    }


def delegation_summary(data: bytes | str | os.PathLike[str]) -> dict[str, Any]:
    """Operators of the model by TFLite builtin name, and the XNNPACK partitions LiteRT made at load time."""
    from export.partitions import tflite_report

    try:
        with on_disk(data, "tflite") as path:
            rep = tflite_report(path)
    except ValueError as exc:
        raise EdgeSeError(str(exc)) from None
    return delegation_from_report(rep)


class TfliteBackend(Backend):
    """TFLite ``.tflite`` for LiteRT (default XNNPACK delegate); int8 is full-integer (int8 in and out)."""

    name = "tflite"
    quantizes_outputs = True

    def layout(self, channels_last: bool) -> str:
        """``NHWC`` when asked (the converter folds the transpose), else ``NCHW``."""
        return "NHWC" if channels_last else "NCHW"

    def lower(self, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *,
              quantized: QuantizedModel | None, layout: str) -> Lowered:
        """:func:`convert_tflite`, with the PT2E quantizer of ``quantized`` for int8."""
        data = convert_tflite(module, example_inputs, quantizer=quantized.quantizer if quantized else None,
                              channels_last=layout == "NHWC")
        return Lowered(data)

    def io(self, artifact: Artifact) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:func:`tflite_io`."""
        return tflite_io(artifact)

    def tensor_specs(self, artifact: Artifact, *, layout: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The signature's tensors with their own names, scales and zero points."""
        ins, outs = tflite_io(artifact)
        return [{**ins[0], "layout": layout}], list(outs)

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:func:`run_tflite`."""
        return run_tflite(artifact, inputs)

    def run_all(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """:func:`run_tflite_all`."""
        return run_tflite_all(artifact, inputs)

    def partitions(self, artifact: Artifact, dtype: str | None = None) -> dict[str, Any]:
        """:func:`export.partitions.tflite_report`: LiteRT's node list after its XNNPACK delegate."""
        from export.partitions import tflite_report

        with on_disk(artifact, self.spec.ext) as path:
            return tflite_report(path, dtype)

    def delegation(self, lowered: Lowered, partitions: dict[str, Any]) -> dict[str, Any]:
        """:func:`delegation_from_report` (the same load of the model as the partition report)."""
        return delegation_from_report(partitions)


register(TfliteBackend())


__all__ = [
    "TfliteBackend",
    "convert_tflite",
    "delegation_from_report",
    "delegation_summary",
    "dequantize_array",
    "quantize_array",
    "run_tflite",
    "run_tflite_all",
    "tflite_io",
]
