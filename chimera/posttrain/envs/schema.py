"""A validator for the subset of JSON Schema the ``json/<task>`` environments use: ``type`` (object,
array, string, integer, number, boolean, null), ``properties``, ``required``, ``additionalProperties:
false``, ``items``, ``enum``, ``minimum`` / ``maximum``, ``minItems`` / ``maxItems``, ``minLength`` /
``maxLength``. Other keywords are refused when the schema is checked, so a schema never silently
means less than it says."""

from __future__ import annotations

from typing import Any

KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "minimum", "maximum",
            "minItems", "maxItems", "minLength", "maxLength"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def check_schema(schema: dict[str, Any], where: str = "$") -> None:
    """Raise ValueError for a schema using keywords outside the supported subset."""
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"schema at {where} uses unsupported keyword(s) {sorted(unknown)} "
                         f"(supported: {', '.join(sorted(KEYWORDS))})")
    for k, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{where}.{k}")
    if "items" in schema:
        check_schema(schema["items"], f"{where}[]")


def _is_type(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t not in TYPES:
        raise ValueError(f"unknown schema type {t!r} (expected one of integer, number, {', '.join(TYPES)})")
    return isinstance(value, TYPES[t])


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """The ways ``value`` breaks ``schema`` ([] when it validates), each naming the path."""
    errors: list[str] = []
    t = schema.get("type")
    if t is not None and not _is_type(value, t):
        return [f"{where}: expected {t}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", float("inf")):
            errors.append(f"{where}: string length {len(value)} outside the allowed range")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", float("inf")):
            errors.append(f"{where}: {len(value)} items outside the allowed range")
        if "items" in schema:
            for i, v in enumerate(value):
                errors += validate(v, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing required property {k!r}" for k in schema.get("required", ()) if k not in value]
        if schema.get("additionalProperties", True) is False:
            errors += [f"{where}: unexpected property {k!r}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], f"{where}.{k}")
    return errors
