"""Read an artifact manifest (``edge-se/manifest/1``, docs/manifest.md) and make its inputs.

Runs on the device: standard library and numpy only (no torch, no edge_se). The input
generator is a SplitMix64 stream reimplemented bit for bit in ``native/runner.cpp``, so the
Python and native runners feed identical bytes for the same seed on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "edge-se/manifest/1"
FORMATS = ("pte", "tflite")
#: Float inputs with no stated range are drawn uniformly from this interval.
DEFAULT_FLOAT_RANGE = (-1.0, 1.0)
_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int32": np.int32, "int64": np.int64}


class ManifestError(ValueError):
    """A manifest or artifact that cannot be trusted: the message names the file and field."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime takes it (shape, numpy dtype, quantisation)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    value_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Manifest:
    """The fields of a manifest the runner relies on; ``raw`` keeps the whole document."""

    path: Path
    artifact: str
    format: str
    dtype: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    raw: dict[str, Any]


def _require(doc: dict[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise ManifestError(f"{where}: missing required key {key!r}")
    return doc[key]


def _tensor(doc: dict[str, Any], where: str) -> TensorSpec:
    shape = _require(doc, "shape", where)
    dtype = _require(doc, "dtype", where)
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ManifestError(f"{where}.shape: expected a list of positive ints, got {shape!r}")
    if dtype not in _DTYPES:
        raise ManifestError(f"{where}.dtype: {dtype!r} not supported; valid: {', '.join(_DTYPES)}")
    rng = doc.get("range")
    return TensorSpec(
        name=str(doc.get("name", "")),
        shape=tuple(shape),
        dtype=dtype,
        scale=None if doc.get("scale") is None else float(doc["scale"]),
        zero_point=None if doc.get("zero_point") is None else int(doc["zero_point"]),
        value_range=None if rng is None else (float(rng[0]), float(rng[1])),
    )


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Parse and validate a manifest file; raise :class:`ManifestError` naming the bad key."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{p}: manifest not found") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{p}: expected a JSON object")
    schema = _require(doc, "schema", str(p))
    if schema != SCHEMA:
        raise ManifestError(f"{p}: schema {schema!r} not supported; expected {SCHEMA!r}")
    fmt = _require(doc, "format", str(p))
    if fmt not in FORMATS:
        raise ManifestError(f"{p}: format {fmt!r} not supported; valid: {', '.join(FORMATS)}")
    inputs = _require(doc, "inputs", str(p))
    if not isinstance(inputs, list) or not inputs:
        raise ManifestError(f"{p}: inputs must be a non-empty list")
    return Manifest(
        path=p,
        artifact=str(_require(doc, "artifact", str(p))),
        format=fmt,
        dtype=str(doc.get("dtype", "")),
        sha256=str(_require(doc, "sha256", str(p))).lower(),
        inputs=tuple(_tensor(d, f"{p}: inputs[{i}]") for i, d in enumerate(inputs)),
        outputs=tuple(_tensor(d, f"{p}: outputs[{i}]") for i, d in enumerate(doc.get("outputs") or [])),
        raw=doc,
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
