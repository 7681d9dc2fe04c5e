"""The toolchain versions every manifest records (the one part of the manifest that needs the install).

The manifest itself (schema, record, reader, writer, naming) is :mod:`contract.manifest` and
:mod:`contract.formats`; import those names from there.
"""

from __future__ import annotations

from contract.provenance import dist_versions

# The distributions whose versions every manifest records, always the same set (a missing one: null);
# each key is the distribution name with "-" as "_" (contract.provenance.dist_versions).
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
    out = dist_versions(VERSIONED.values())
    if out["edge_se"] is None:
        import edge_se

        out["edge_se"] = edge_se.__version__
    return out
