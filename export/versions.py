"""The toolchain versions every manifest records (the one part of the manifest that needs the install).

The manifest itself (schema, record, reader, writer, naming) is :mod:`contract.manifest` and
:mod:`contract.formats`; import those names from there.
"""

from __future__ import annotations

from importlib import metadata

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
