"""JSON Schema (draft 2020-12) of report v1, generated from the dataclasses in `agent.report`.

The shipped file `agent/schema/report-v1.json` is this function's output; a test regenerates and
compares, so the file cannot drift from the code. Regenerate with:
    python -m agent.report_schema > agent/schema/report-v1.json
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from datetime import datetime
from typing import Any

from agent.report import SCHEMA_VERSION, Report

SCHEMA_ID = "https://gitops-agent.invalid/schema/report-v1.json"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(a, defs) for a in typing.get_args(tp) if a is not type(None)]
        nullable = type(None) in typing.get_args(tp)
        return {"anyOf": [*options, {"type": "null"}]} if nullable else options[0]
    if origin is tuple:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0], defs)}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder against recursion
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp is datetime:
        return {"type": "string", "format": "date-time"}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        properties[f.name] = _type_schema(hints[f.name], defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    # Unknown extra fields are tolerated by readers of v1, so they are allowed here too.
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": True}


def build() -> dict[str, Any]:
    """The report v1 JSON Schema as a dict."""
    defs: dict[str, Any] = {}
    root = _object_schema(Report, defs)
    root["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    root["required"] = sorted({*root["required"], "schema_version"}, key=list(root["properties"]).index)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"gitops-agent report, schema v{SCHEMA_VERSION}",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
