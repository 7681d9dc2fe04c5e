"""Read an artifact manifest (:mod:`contract.manifest`, docs/manifest.md) and make its inputs.

Runs on the device: standard library, numpy and ``contract`` only (no torch, no edge_se). The input
generator is a SplitMix64 stream reimplemented bit for bit in ``native/runner.cpp``, so the
Python and native runners feed identical bytes for the same seed on any machine.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import ContractError
from contract.files import sha256_bytes, sha256_file
from contract.manifest import Manifest, TensorSpec
from contract.manifest import load as load_manifest

#: Float inputs with no stated range are drawn uniformly from this interval.
DEFAULT_FLOAT_RANGE = (-1.0, 1.0)
_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
           "int64": np.int64}

ManifestError = ContractError
"""A manifest or artifact that cannot be trusted: the message names the file and field (the contract's error)."""


def verify_artifact(artifact: str | os.PathLike[str], manifest: Manifest) -> str:
    """Check the artifact's sha256 against the manifest; return the digest or raise."""
    digest = sha256_file(artifact)
    if digest != manifest.sha256:
        raise ManifestError(
            f"{artifact}: sha256 {digest[:16]}... does not match manifest sha256 {manifest.sha256[:16]}...; "
            "the artifact was modified or the manifest belongs to another file"
        )
    return digest


_MASK = (1 << 64) - 1


def splitmix64(seed: int, count: int) -> np.ndarray:
    """Return ``count`` uint64 values of the SplitMix64 stream started at ``seed``."""
    state = np.uint64(seed & _MASK)
    gamma = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = state + gamma * np.arange(1, count + 1, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def input_range(spec: TensorSpec) -> tuple[float, float]:
    """Float range inputs are drawn from: stated ``range``, the int8 grid, or the default."""
    if spec.value_range is not None:
        return spec.value_range
    if spec.scale is not None:
        info = np.iinfo(_DTYPES[spec.dtype])
        zp = spec.zero_point or 0
        return ((info.min - zp) * spec.scale, (info.max - zp) * spec.scale)
    return DEFAULT_FLOAT_RANGE


def make_input(spec: TensorSpec, seed: int) -> np.ndarray:
    """Deterministic input for one tensor: uniform floats in range, quantised when stated.

    Uniform value ``u = (top 24 bits of splitmix64) / 2**24`` in float64, then
    ``x = lo + (hi - lo) * u`` cast to float32. A quantised input is
    ``clip(round_half_even(x / scale) + zero_point, dtype range)``, as docs/manifest.md says.
    """
    n = int(np.prod(spec.shape))
    lo, hi = input_range(spec)
    u = (splitmix64(seed, n) >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    x = (lo + (hi - lo) * u).astype(np.float32)
    dtype = _DTYPES[spec.dtype]
    if spec.scale is not None:
        info = np.iinfo(dtype)
        q = np.rint(x.astype(np.float64) / spec.scale) + (spec.zero_point or 0)
        return np.clip(q, info.min, info.max).astype(dtype).reshape(spec.shape)
    if dtype != np.float32:
        raise ManifestError(f"input {spec.name!r}: dtype {spec.dtype} needs scale/zero_point or --input-file")
    return x.reshape(spec.shape)


def make_inputs(manifest: Manifest, seed: int) -> list[np.ndarray]:
    """Inputs for every manifest input; input ``i`` uses seed ``seed + i``."""
    return [make_input(spec, seed + i) for i, spec in enumerate(manifest.inputs)]


def load_input_file(path: str | os.PathLike[str], spec: TensorSpec) -> np.ndarray:
    """Load a real sample: a ``.npy`` file or raw little-endian bytes of the manifest shape."""
    p = Path(path)
    dtype = np.dtype(_DTYPES[spec.dtype])
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    else:
        arr = np.frombuffer(p.read_bytes(), dtype=dtype.newbyteorder("<"))
    expected = int(np.prod(spec.shape))
    if arr.size != expected or arr.dtype != dtype:
        raise ManifestError(
            f"{p}: input {spec.name!r} needs {expected} values of {spec.dtype} (shape {list(spec.shape)}), "
            f"got {arr.size} of {arr.dtype}"
        )
    return np.ascontiguousarray(arr.reshape(spec.shape).astype(dtype))


def load_golden(artifact: str | os.PathLike[str], manifest: Manifest | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The artifact's parity data (``parity.golden`` of its manifest: inputs and reference outputs), checked.

    Arrays: ``inputs`` (``[samples, *input shape]``, the artifact's layout), ``reference`` (what the
    export compared the runtime with: the eager model for fp32, the quantised graph for int8),
    ``real`` (per sample, a real image) and, for int8, ``float_reference`` (the float model's logits).

    Raises:
        ManifestError: no ``parity.golden`` (exported with ``--no-check``), a missing, altered
            (sha256) or unreadable file, or a missing array; the message names the file.
    """
    golden = (manifest.get("parity") or {}).get("golden")
    if not isinstance(golden, dict) or "file" not in golden:
        raise ManifestError(f"manifest of {str(artifact)!r} has no parity.golden (exported with --no-check?)")
    path = Path(artifact).parent / str(golden["file"])
    if not path.is_file():
        raise ManifestError(f"parity data {str(path)!r} is missing")
    data = path.read_bytes()
    if sha256_bytes(data) != golden.get("sha256"):
        raise ManifestError(f"parity data {str(path)!r} does not match the sha256 in its manifest")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ManifestError(f"parity data {str(path)!r} is unreadable: {exc}") from None
    needed = ["inputs", "reference", "real"] + (["float_reference"] if manifest.get("dtype") == "int8" else [])
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ManifestError(f"parity data {str(path)!r} lacks array(s): {', '.join(missing)}")
    return arrays


__all__ = [
    "DEFAULT_FLOAT_RANGE",
    "Manifest",
    "ManifestError",
    "TensorSpec",
    "input_range",
    "load_golden",
    "load_input_file",
    "load_manifest",
    "make_input",
    "make_inputs",
    "sha256_file",
    "splitmix64",
    "verify_artifact",
]
