"""Manifests (``edge-se/manifest/1``, docs/manifest.md) for peer artifacts, and peer naming.

Standard library and :mod:`contract` only: imported both by the main-venv builders and by the
TensorFlow builder that runs in the benchmark-only ``.venv-peers`` (which holds neither torch nor
edge_se). The manifest itself, its schema, naming and atomic writes are :mod:`contract`'s.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from contract.files import sha256_file
from contract.formats import DTYPES, FORMATS
from contract.manifest import SCHEMA

ARCHS = ("efficientnet_b0", "mobilenetv3_large_100")
"""The architectures compared, by edge-se registry name (the table's key)."""

RECIPES: dict[str, dict[str, str]] = {
    "edge-se": {"pte": "edge-se export (ExecuTorch/XNNPACK)", "tflite": "edge-se export (litert-torch)"},
    "executorch": {"pte": "torchvision + ExecuTorch XNNPACKQuantizer + XnnpackPartitioner"},
    "litert-torch": {"tflite": "torchvision + litert-torch PT2EQuantizer"},
    "tf-converter": {"tflite": "Keras applications + TensorFlow TFLiteConverter (full-integer int8)"},
}
"""Who built an artifact -> format -> one-line description (edge-se first, then the peers)."""

EDGE_SE_EXPORT_FLAGS = ("--calib", "random", "--channels-last")
"""``edge-se export`` flags of every edge-se artifact the run builds. ``--calib random``: the peers
calibrate on seeded noise too (the same inputs for every recipe). ``--channels-last``: the
``.tflite`` takes NHWC input, as the Keras peer does and as TFLite apps feed camera frames; an NCHW
``.tflite`` runs one more operator, an input transpose (0.33 ms of 34 ms on EfficientNet-B0 int8,
AVX2-only EPYC), which would be timed against the peer as edge-se's loss. ``.pte`` stays NCHW (the
flag does not apply), as ExecuTorch takes it; litert-torch's peer keeps its standard recipe's NCHW."""


def builder_parser(prog: str, doc: str, seed_help: str) -> argparse.ArgumentParser:
    """The options every peer builder shares: ``--out``, ``--arch`` (repeatable), ``--resolution`` (px), ``--seed``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the artifacts and manifests")
    p.add_argument("--arch", action="append", choices=ARCHS, help="architecture (repeatable; default: all)")
    p.add_argument("--resolution", type=int, default=224, help="input side in pixels")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    return p



def peer_artifact_name(arch: str, recipe: str, dtype: str, fmt: str) -> str:
    """``{arch}_{recipe}_{dtype}.{ext}``, e.g. ``efficientnet_b0_tf-converter_int8.tflite``.

    Raises:
        ValueError: an unknown architecture, recipe, format or dtype (the valid choices named).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if recipe not in RECIPES or fmt not in RECIPES[recipe]:
        valid = ", ".join(f"{r}/{f}" for r, fs in RECIPES.items() for f in fs)
        raise ValueError(f"unknown recipe/format {recipe}/{fmt}; valid: {valid}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return f"{arch}_{recipe}_{dtype}.{FORMATS[fmt].ext}"


def tensor_entry(name: str, shape: list[int], dtype: str, *, layout: str | None = None,
                 scale: float | None = None, zero_point: int | None = None) -> dict[str, Any]:
    """One ``inputs``/``outputs`` entry; ``scale``/``zero_point`` only for a quantised tensor."""
    entry: dict[str, Any] = {"name": name, "shape": [int(d) for d in shape], "dtype": dtype,
                             "scale": None if scale is None else float(scale),
                             "zero_point": None if zero_point is None else int(zero_point)}
    if layout is not None:
        entry["layout"] = layout
    return entry


def peer_manifest(
    artifact: str | os.PathLike[str],
    *,
    fmt: str,
    dtype: str,
    arch: str,
    recipe: str,
    resolution: int,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    source: str,
    versions: dict[str, str | None],
    delegation: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    params: int | None = None,
) -> dict[str, Any]:
    """The manifest of a peer artifact already on disk (its size and sha256 are read from the file).

    Args:
        artifact: the written ``.pte``/``.tflite``.
        fmt: ``pte`` or ``tflite``.
        dtype: ``fp32`` or ``int8``.
        arch: edge-se name of the architecture (``model`` field, so the table can group by it).
        recipe: a key of :data:`RECIPES` (who built it).
        resolution: input side in pixels.
        inputs: :func:`tensor_entry` per input, as the runtime takes it.
        outputs: :func:`tensor_entry` per output.
        source: where the model came from, e.g. ``torchvision.models.efficientnet_b0``.
        versions: converter/runtime versions.
        delegation: delegation summary, when the builder has one.
        quantization: how an int8 artifact was quantised (``None`` for fp32).
        params: parameter count of the source model.
    """
    p = Path(artifact)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return {
        "schema": SCHEMA,
        "artifact": p.name,
        "format": fmt,
        "backend": FORMATS[fmt].backend,
        "dtype": dtype,
        "model": arch,
        "peer": {"recipe": recipe, "source": source, "description": RECIPES[recipe][fmt]},
        "resolution": resolution,
        "inputs": inputs,
        "outputs": outputs,
        "quantization": quantization,
        "params": params,
        "macs": None,
        "se_params": None,
        "se_macs": None,
        "size_bytes": p.stat().st_size,
        "sha256": sha256_file(p),
        "versions": versions,
        "parity": {"passed": None, "skipped": True, "reason": "peer artifact: built for timing only"},
        "delegation": delegation,
        "weights": {"source": "random",
                    "batchnorm": "random affine parameters, statistics estimated on generated images"},
    }
