"""The bench record (``edge-se/bench/2``): one flat shape for every timing, its schema and its reader.

Every producer (the on-device runner, the native runner, ``edge-se bench`` and its transports,
``edge-se bench-torch``, the peer benchmarks) writes this shape; every reader (the bench log, the
peer tables, the pipeline) goes through :func:`read_record`, which validates and upgrades the
nested ``edge-se/bench/1`` records written before (``latency_ms: {p50, ...}``), so committed and
cached results still load. ``bench.schema.json`` in this package is the machine-readable form;
docs/manifest.md says what each field means. Standard library only (the runner imports it).

Example:
    >>> rec = read_record({"schema": "edge-se/bench/1", "latency_ms": {"p50": 2.0, "count": 5}})
    >>> rec["p50_ms"], rec["samples"], rec["schema"]
    (2.0, 5, 'edge-se/bench/2')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract import files, jsonschema_lite, schemas
from contract.errors import ContractError

SCHEMA = "edge-se/bench/2"
"""The schema string of every bench record; ``bench.schema.json``'s ``$id`` and ``schema`` const."""

SCHEMA_V1 = "edge-se/bench/1"
"""The nested shape written before (``latency_ms: {min, p50, p90, p99, mean, std, count}``)."""

LATENCY_KEYS: tuple[str, ...] = ("p50_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "std_ms", "samples")
"""The flat latency keys (pooled over all repeats), at the top level of a measured record."""

STABILITY_KEYS: tuple[str, ...] = ("trimmed_mean_ms", "cv_pct", "p99_p50", "stability", "stability_reasons")
"""The stability figures and verdict (``device_bench.stats``), at the top level of a measured record.

Optional when reading (records written before them lack them); every measured record this
checkout's runners write has them (``validate(..., fresh=True)``, the schema's ``$defs/written_now``).
Each repeat's summary has the first three."""

# edge-se/bench/1 latency_ms key -> the flat key (also the keys of each repeat's summary).
_V1_KEYS = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "min": "min_ms", "mean": "mean_ms",
            "std": "std_ms", "count": "samples"}


def _kind(doc: Mapping[str, Any]) -> str:
    """The title of the schema's ``anyOf`` branch a record means to be (for a precise error line)."""
    if "upgraded_from" in doc:
        return "upgraded from edge-se/bench/1"
    if doc.get("count_only"):
        return "instruction count only"
    if doc.get("status") in ("error", "skipped"):
        return "not measured"
    return "measured"


def validate(doc: Any, where: str, *, fresh: bool = False) -> None:
    """Raise a one-line :class:`ContractError` naming ``where`` and the field if ``doc`` is not a valid record.

    The line names the first violation of the kind of record ``doc`` is (measured, not measured:
    ``status`` error or skipped, ...), and says how many more there are. ``fresh``: ``doc`` was
    just written by a runner of this checkout, so a measured one must also carry
    :data:`STABILITY_KEYS` (and each repeat its stability figures), which older records lack.
    """
    if isinstance(doc, dict) and "schema" in doc and doc["schema"] != SCHEMA:
        raise ContractError(f"{where}: bench record schema {doc['schema']!r} is not supported here; "
                            f"expected {SCHEMA!r} (read_record upgrades {SCHEMA_V1!r})")
    schema = schemas.load("bench")
    problems = jsonschema_lite.errors(doc, schema)
    if problems and isinstance(doc, dict):
        branch = next(b for b in schema["anyOf"] if b["title"] == _kind(doc))
        base = {k: v for k, v in schema.items() if k != "anyOf"}
        problems = (jsonschema_lite.errors(doc, base, schema) + jsonschema_lite.errors(doc, branch, schema)
                    or problems)
    if fresh and not problems and _kind(doc) == "measured":
        problems = jsonschema_lite.errors(doc, schema["$defs"]["written_now"], schema)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ContractError(f"{where}: {problems[0]}{more}")


def append(path: Path, rec: Mapping[str, Any]) -> None:
    """Validate ``rec`` and append it to the JSON-lines file ``path`` as one whole line (sorted keys).

    An invalid record raises before anything is written, so a results file holds only valid lines.
    """
    validate(dict(rec), f"{path} (being written)")
    files.append_line(path, json.dumps(rec, sort_keys=True))


def _flat(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A v1 summary ``{min, p50, ..., count, seconds}`` with the flat key names."""
    return {_V1_KEYS.get(k, k): v for k, v in summary.items()}


def upgrade(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``edge-se/bench/2`` form of an ``edge-se/bench/1`` record (or one written with no schema).

    ``latency_ms.*`` move to the flat keys, each repeat's summary gets the same key names, and
    ``upgraded_from`` says where the record came from. Keys v1 did not have (``measure``) are
    not invented: v1 records kept ``warmup``/``runs``/``min_seconds`` at the top level, which stay.
    """
    out = {k: v for k, v in doc.items() if k != "latency_ms"}
    latency = doc.get("latency_ms")
    if latency is not None:
        if not isinstance(latency, Mapping):
            raise ContractError(f"latency_ms: expected an object, got {type(latency).__name__}")
        out.update(_flat(latency))
    if isinstance(doc.get("repeats"), list):
        out["repeats"] = [_flat(r) if isinstance(r, Mapping) else r for r in doc["repeats"]]
    out["schema"] = SCHEMA
    out["upgraded_from"] = SCHEMA_V1
    return out


def read_record(doc: Any, where: str = "bench record") -> dict[str, Any]:
    """Validate a bench record, upgrading an ``edge-se/bench/1`` one; return the flat record.

    Raises:
        ContractError: one line naming ``where`` and the field (not an object, a bad field, an
            unknown schema).
    """
    if not isinstance(doc, Mapping):
        raise ContractError(f"{where}: a bench record must be a JSON object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema is None or schema == SCHEMA_V1:
        try:
            doc = upgrade(doc)
        except ContractError as exc:
            raise ContractError(f"{where}: {exc}") from None
    rec = dict(doc)
    validate(rec, where)
    return rec


def latency_summary(rec: Mapping[str, Any]) -> str:
    """``p50 1.23 ms`` (or ``p50 n/a``) of a flat record, for one-line logs."""
    p50 = rec.get("p50_ms")
    return f"p50 {p50:.4g} ms" if isinstance(p50, (int, float)) else "p50 n/a"
