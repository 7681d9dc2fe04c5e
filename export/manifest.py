"""The artifact manifest (``edge-se/manifest/1``, see docs/manifest.md): build, write, read, check.

A manifest sits beside its artifact as ``{artifact}.json``; ``device_bench`` reads only the two.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_se.atomic import atomic_path, sha256_file
from edge_se.errors import EdgeSeError

SCHEMA = "edge-se/manifest/1"

FORMATS: dict[str, tuple[str, str]] = {"pte": ("xnnpack", "pte"), "tflite": ("litert", "tflite")}
"""format -> (backend name in the artifact file name, file extension)."""

DTYPES = ("fp32", "int8")

REQUIRED_KEYS = (
    "schema", "artifact", "format", "backend", "dtype", "model", "resolution", "inputs", "outputs",
    "quantization", "params", "macs", "se_params", "se_macs", "size_bytes", "sha256", "versions",
    "parity", "delegation",
)
_TENSOR_KEYS = ("name", "shape", "dtype")

# The distributions whose versions every manifest records, always the same set (a missing one: null).
VERSIONED = {
    "torch": "torch",
    "executorch": "executorch",
    "litert_torch": "litert-torch",
    "ai_edge_litert": "ai-edge-litert",
    "torchao": "torchao",
    "nncf": "nncf",
    "edge_se": "edge-se",
}


def artifact_name(model: str, fmt: str, dtype: str) -> str:
    """``{model}_{backend}_{dtype}.{ext}``, e.g. ``efficientnet_b0_xnnpack_int8.pte``."""
    if fmt not in FORMATS:
        raise EdgeSeError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise EdgeSeError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    backend, ext = FORMATS[fmt]
    return f"{model}_{backend}_{dtype}.{ext}"


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """The manifest of ``artifact``: the same path with ``.json`` appended."""
    p = Path(artifact)
    return p.with_name(p.name + ".json")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str | None]:
    """Installed versions of the fixed set :data:`VERSIONED` (``None`` for one not installed)."""
    out: dict[str, str | None] = {}
    for key, dist in VERSIONED.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    if out["edge_se"] is None:
        import edge_se

        out["edge_se"] = edge_se.__version__
    return out


def publish(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, readable by others (0644) like any build output.

    ``edge_se.atomic`` creates its temporary file with ``mkstemp`` (mode 0600); artifacts are
    copied to devices and served, so they get the usual file mode before the rename.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)
    return Path(path)


def write_manifest(artifact: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` beside ``artifact`` atomically; return the manifest path."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks required key(s): {', '.join(missing)}")
    path = manifest_path(artifact)
    publish(path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return path


def read_manifest(artifact: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the manifest beside ``artifact``.

    Raises:
        EdgeSeError: no manifest, not JSON, wrong schema, or a required key missing (named).
    """
    path = manifest_path(artifact)
    if not path.is_file():
        raise EdgeSeError(f"no manifest {str(path)!r} beside {str(artifact)!r} (export writes one)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeSeError(f"manifest {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EdgeSeError(f"manifest {str(path)!r} holds a {type(data).__name__}, not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise EdgeSeError(f"manifest {str(path)!r} lacks required key(s): {', '.join(missing)}")
    if data["schema"] != SCHEMA:
        raise EdgeSeError(f"manifest {str(path)!r}: schema {data['schema']!r} is not {SCHEMA!r}")
    if data["format"] not in FORMATS:
        raise EdgeSeError(f"manifest {str(path)!r}: format {data['format']!r}; valid: {', '.join(FORMATS)}")
    for field in ("inputs", "outputs"):
        tensors = data[field]
        if not isinstance(tensors, list) or not tensors:
            raise EdgeSeError(f"manifest {str(path)!r}: {field} must be a non-empty list")
        for i, t in enumerate(tensors):
            lacks = [k for k in _TENSOR_KEYS if not isinstance(t, dict) or k not in t]
            if lacks:
                raise EdgeSeError(f"manifest {str(path)!r}: {field}[{i}] lacks {', '.join(lacks)}")
            shape = t["shape"]
            if not isinstance(shape, list) or not all(isinstance(s, int) and s > 0 for s in shape):
                raise EdgeSeError(
                    f"manifest {str(path)!r}: {field}[{i}].shape must be a list of positive ints, got {shape!r}"
                )
    return data


__all__ = [
    "DTYPES",
    "FORMATS",
    "REQUIRED_KEYS",
    "SCHEMA",
    "artifact_name",
    "manifest_path",
    "publish",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "versions",
    "write_manifest",
]
