"""The artifact formats, dtypes and file naming: the one table every layer reads.

A format is data here (its backend name in file names, its extension, the runtime that runs
it); the code that lowers to it lives in ``export.backends`` and the code that runs it on a
device in ``device_bench.runtimes``, one file each.
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
    runtime: str  # the runtime that runs it, as device_bench.runtimes names it


FORMATS: dict[str, FormatSpec] = {
    "pte": FormatSpec("pte", backend="xnnpack", ext="pte", runtime="executorch"),
    "tflite": FormatSpec("tflite", backend="litert", ext="tflite", runtime="litert"),
}
DTYPES: tuple[str, ...] = ("fp32", "int8")


def format_spec(fmt: str, *, flag: str = "--format") -> FormatSpec:
    """The spec of ``fmt``; a one-line :class:`ContractError` naming ``flag`` for an unknown one."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ContractError(f"{flag}: unknown format {fmt!r}; valid: {', '.join(FORMATS)}") from None


def format_of(path: str | os.PathLike[str]) -> str:
    """The format of an artifact file from its extension (``.pte`` -> ``pte``)."""
    ext = Path(path).suffix.lstrip(".")
    for spec in FORMATS.values():
        if spec.ext == ext:
            return spec.name
    valid = ", ".join("." + s.ext for s in FORMATS.values())
    raise ContractError(f"{path}: unknown artifact extension {ext!r}; valid: {valid}")


def artifact_name(model: str, fmt: str, dtype: str, *, tag: str | None = None) -> str:
    """``{model}_{backend}_{dtype}[_{tag}].{ext}``, e.g. ``efficientnet_b0_xnnpack_int8.pte``."""
    spec = format_spec(fmt)
    if dtype not in DTYPES:
        raise ContractError(f"--dtype: unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    suffix = f"_{tag}" if tag else ""
    return f"{model}_{spec.backend}_{dtype}{suffix}.{spec.ext}"


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """The manifest of ``artifact``: the same path with ``.json`` appended."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")
