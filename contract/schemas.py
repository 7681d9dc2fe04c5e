"""The JSON Schema files shipped in this package, loaded once and checked against the validator."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from contract import jsonschema_lite
from contract.errors import ContractError

SCHEMA_DIR = Path(__file__).resolve().parent


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema ``{name}.schema.json`` of this package (``manifest``, ``bench``)."""
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    jsonschema_lite.check_schema(schema)
    return schema


def validate(doc: Any, name: str, where: str) -> None:
    """Raise a one-line :class:`ContractError` ``"{where}: field: what is wrong"`` if ``doc`` breaks schema ``name``.

    The line names the first violation and says how many more there are.
    """
    problems = jsonschema_lite.errors(doc, load(name))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ContractError(f"{where}: {problems[0]}{more}")
