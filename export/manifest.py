"""The export side of the manifest: the toolchain versions every manifest records.

The manifest itself (schema, record, reader, writer, naming) is :mod:`contract.manifest` and
:mod:`contract.formats`; this module only adds what needs the installed toolchain.
"""

from __future__ import annotations

from importlib import metadata

from contract.files import publish, sha256_bytes, sha256_file
from contract.formats import DTYPES, FORMATS, artifact_name, manifest_path
from contract.manifest import REQUIRED_KEYS, SCHEMA, Manifest, read_manifest, write_manifest

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


__all__ = [
    "DTYPES",
    "FORMATS",
    "REQUIRED_KEYS",
    "SCHEMA",
    "Manifest",
    "artifact_name",
    "manifest_path",
    "publish",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "versions",
    "write_manifest",
]
