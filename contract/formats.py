"""The artifact formats, dtypes and file naming: the one table every layer reads.

A format is data here (its backend name in file names and its extension); the code that
lowers to it lives in ``export.backends`` (one module per format) and the code that runs it on a device
in ``device_bench.runtimes``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from contract.errors import ContractError


@dataclass(frozen=True)
class FormatSpec:
    """One artifact format."""

    name: str
    backend: str  # the delegate, in artifact file names (``..._xnnpack_int8.pte``)
    ext: str  # file extension without the dot


FORMATS: dict[str, FormatSpec] = {
    "pte": FormatSpec("pte", backend="xnnpack", ext="pte"),
    "tflite": FormatSpec("tflite", backend="litert", ext="tflite"),
}
DTYPES: tuple[str, ...] = ("fp32", "int8")
#: How ``edge-se export --gate-outputs`` lays the SE gates out after the logits (the manifest's
#: ``gate_outputs.layout``): ``concat``, one output holding every gate (the default);
#: ``separate``, one output per SE block; ``quantized``, one output per SE block holding the gate
#: as the artifact computes it (int8 with its scale and zero point in an int8 artifact; float in
#: fp32) (export/gate_outputs.py).
GATE_LAYOUTS: tuple[str, ...] = ("concat", "separate", "quantized")


def format_spec(fmt: str, *, flag: str = "--format") -> FormatSpec:
    """The spec of ``fmt``; a one-line :class:`ContractError` naming ``flag`` for an unknown one."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ContractError(f"{flag}: unknown format {fmt!r}; valid: {', '.join(FORMATS)}") from None


def artifact_name(model: str, fmt: str, dtype: str) -> str:
    """``{model}_{backend}_{dtype}.{ext}``, e.g. ``efficientnet_b0_xnnpack_int8.pte``."""
    spec = format_spec(fmt)
    if dtype not in DTYPES:
        raise ContractError(f"--dtype: unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return f"{model}_{spec.backend}_{dtype}.{spec.ext}"


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """The manifest of ``artifact``: the same path with ``.json`` appended."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")
