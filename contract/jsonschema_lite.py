"""A JSON Schema (draft 2020-12) validator for the subset the contract's schema files use.

The on-device runner must validate manifests with the standard library alone, so this checks
``type``, ``enum``, ``const``, ``required``, ``properties``, ``additionalProperties``, ``items``,
``minItems``, ``minimum``, ``exclusiveMinimum``, ``maximum``, ``pattern``, ``anyOf`` and local
``$ref`` (``#/$defs/...``). ``tests/test_contract.py`` checks that it agrees with the reference
``jsonschema`` package on every schema file shipped here. Any other keyword is refused when the
schema is loaded, so a schema can never silently use something this code ignores.
"""

from __future__ import annotations

import re
from typing import Any

SUPPORTED = frozenset({
    "$schema", "$id", "$defs", "$ref", "title", "description", "type", "enum", "const", "required",
    "properties", "additionalProperties", "items", "minItems", "minimum", "exclusiveMinimum", "maximum",
    "pattern", "anyOf", "examples",
})

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}


def check_schema(schema: Any, where: str = "#") -> None:
    """Raise ``ValueError`` if ``schema`` uses a keyword this validator does not implement."""
    if isinstance(schema, dict):
        unknown = set(schema) - SUPPORTED
        if unknown:
            raise ValueError(f"schema {where}: unsupported keyword(s) {sorted(unknown)}")
        for key in ("properties", "$defs"):
            for name, sub in schema.get(key, {}).items():
                check_schema(sub, f"{where}/{key}/{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                check_schema(schema[key], f"{where}/{key}")
        for i, sub in enumerate(schema.get("anyOf", [])):
            check_schema(sub, f"{where}/anyOf/{i}")


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "") -> list[str]:
    """Every violation of ``schema`` by ``value``, each as ``"field.path: what is wrong"``."""
    root = schema if root is None else root
    here = path or "(top level)"
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"only local $defs references are supported, got {ref!r}")
        return errors(value, root["$defs"][ref.split("/")[-1]], root, path)
    if "anyOf" in schema:
        branches = [errors(value, sub, root, path) for sub in schema["anyOf"]]
        if all(branches):
            return min(branches, key=len)
    out: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            return [f"{here}: expected {' or '.join(names)}, got {type(value).__name__} {value!r:.60}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{here}: must be {schema['const']!r}, got {value!r:.60}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{here}: {value!r:.60} is not one of {', '.join(map(repr, schema['enum']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{here}: {value} is below the minimum {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{here}: {value} must be > {schema['exclusiveMinimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{here}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{here}: {value!r:.60} does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{here}: needs at least {schema['minItems']} item(s), has {len(value)}")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                out += errors(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{path + '.' if path else ''}{key}: missing required key")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub_path = f"{path}.{key}" if path else key
            if key in props:
                out += errors(item, props[key], root, sub_path)
            elif extra is False:
                out.append(f"{sub_path}: unknown key")
            elif isinstance(extra, dict):
                out += errors(item, extra, root, sub_path)
    return out
