"""The artifact manifest (``edge-se/manifest/1``): the one definition, its schema, its reader and writer.

A manifest sits beside its artifact as ``{artifact}.json`` (docs/manifest.md says what each field
means; ``manifest.schema.json`` in this package is the machine-readable form). Every writer
(export, the peer benchmarks) and every reader (verify, device_bench, the on-device runner, the
pipeline) goes through :func:`write_manifest` and :func:`read_manifest`, which validate against
the schema. Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import schemas
from contract.errors import ContractError
from contract.files import publish
from contract.formats import manifest_path

SCHEMA = "edge-se/manifest/1"
"""The schema string of every manifest; ``manifest.schema.json``'s ``$id`` and ``schema`` const."""

REQUIRED_KEYS: tuple[str, ...] = tuple(schemas.load("manifest")["required"])


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime takes it (shape, numpy dtype name, quantisation)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str | None = None
    scale: float | None = None
    zero_point: int | None = None
    value_range: tuple[float, float] | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TensorSpec:
        """The spec of one validated ``inputs``/``outputs`` entry."""
        rng = doc.get("range")
        return cls(
            name=str(doc["name"]),
            shape=tuple(int(d) for d in doc["shape"]),
            dtype=str(doc["dtype"]),
            layout=doc.get("layout"),
            scale=None if doc.get("scale") is None else float(doc["scale"]),
            zero_point=None if doc.get("zero_point") is None else int(doc["zero_point"]),
            value_range=None if rng is None else (float(rng[0]), float(rng[1])),
        )


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: the typed fields every reader relies on; ``raw`` keeps the whole document."""

    path: Path
    artifact: str
    format: str
    backend: str
    dtype: str
    model: str
    resolution: int
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    raw: Mapping[str, Any]

    @property
    def artifact_path(self) -> Path:
        """The artifact this manifest describes (its ``artifact`` name, beside the manifest)."""
        return self.path.with_name(self.artifact)

    @property
    def output_quant(self) -> list[tuple[float | None, int | None]]:
        """Per output, ``(scale, zero_point)``; an integer output with a scale reads ``(q - zero_point) * scale``."""
        return [(o.scale, o.zero_point) for o in self.outputs]

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the whole document (``raw``), for the informational keys."""
        return self.raw.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __contains__(self, key: object) -> bool:
        return key in self.raw


def validate(doc: Any, where: str) -> None:
    """Raise a one-line :class:`ContractError` naming ``where`` and the field if ``doc`` is not a valid manifest."""
    if isinstance(doc, dict) and "schema" in doc and doc["schema"] != SCHEMA:
        raise ContractError(f"{where}: schema {doc['schema']!r} is not supported; expected {SCHEMA!r}")
    schemas.validate(doc, "manifest", where)


def from_dict(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Manifest:
    """The typed record of a manifest document (validated here) read from ``path``."""
    validate(doc, str(path))
    return Manifest(
        path=Path(path),
        artifact=doc["artifact"],
        format=doc["format"],
        backend=doc["backend"],
        dtype=doc["dtype"],
        model=doc["model"],
        resolution=int(doc["resolution"]),
        sha256=str(doc["sha256"]).lower(),
        size_bytes=int(doc["size_bytes"]),
        inputs=tuple(TensorSpec.from_json(t) for t in doc["inputs"]),
        outputs=tuple(TensorSpec.from_json(t) for t in doc["outputs"]),
        raw=doc,
    )


def load(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest file ``path`` (one-line :class:`ContractError` naming file and field)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(f"{p}: manifest not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"{p}: manifest is not valid JSON ({exc})") from None
    return from_dict(doc, p)


def read_manifest(artifact: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest beside ``artifact`` (``{artifact}.json``)."""
    path = manifest_path(artifact)
    if not path.is_file():
        raise ContractError(f"no manifest {str(path)!r} beside {str(artifact)!r} (export writes one)")
    return load(path)


def write_manifest(artifact: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Validate ``doc`` and write it beside ``artifact`` atomically (mode 0644); return the manifest path.

    Raises:
        ContractError: the document breaks the schema (nothing is written).
    """
    path = manifest_path(artifact)
    validate(dict(doc), f"{path} (being written)")
    publish(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    return path
