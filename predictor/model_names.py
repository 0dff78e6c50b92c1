"""Matching a served model name to a CASTILLO model name.

CASTILLO writes ``Qwen--Qwen2.5-14B-Instruct``; servers say ``Qwen/Qwen2.5-14B-Instruct``,
sometimes without the organisation. Both forms, in any case, match.
"""

from __future__ import annotations

from collections.abc import Iterable


def canonical_model_name(name: str) -> str:
    return name.strip().lower().replace("/", "--")


def model_aliases(known: Iterable[str]) -> dict[str, int]:
    """Alias -> index into ``known`` (full canonical name and the name without organisation)."""
    aliases: dict[str, int] = {}
    bare_seen: dict[str, int] = {}
    for index, name in enumerate(known):
        canonical = canonical_model_name(name)
        aliases[canonical] = index
        bare = canonical.rsplit("--", 1)[-1]
        bare_seen[bare] = bare_seen.get(bare, 0) + 1
        aliases.setdefault(bare, index)
    for bare, count in bare_seen.items():
        if count > 1 and aliases.get(bare) is not None and bare not in map(canonical_model_name, known):
            del aliases[bare]  # ambiguous without the organisation: leave it to the agnostic path
    return aliases


def resolve_model(name: str, aliases: dict[str, int]) -> int | None:
    canonical = canonical_model_name(name)
    if canonical in aliases:
        return aliases[canonical]
    return aliases.get(canonical.rsplit("--", 1)[-1])
