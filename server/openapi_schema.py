"""Request-body schemas for the OpenAPI document, self-contained.

Pydantic puts nested models under a local ``$defs`` with ``#/$defs/...``
references. Embedded in the OpenAPI document, those references point at the
document's root, where nothing is defined, so schema-driven clients and fuzzers
cannot resolve them. The gateway's request models are not recursive, so the
definitions are inlined instead.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def inline_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref[len("#/$defs/"):]
                if name in seen:
                    raise ValueError(f"recursive request model {name!r} cannot be inlined")
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[name], seen + (name,)), **resolve(rest, seen)}
            return {k: resolve(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        return node

    return resolve(schema, ())
