"""Documentation of the node policy, generated from the schema table (docs/policy.md, explain)."""

from __future__ import annotations

import json
from typing import Any

from ultraviolet.errors import PolicyError
from ultraviolet.policy.schema import (
    FIELDS,
    REQUIRED,
    SECTION_DOCS,
    SECTIONS,
    Field,
    Kind,
    fields_of,
)


def _default_text(field: Field) -> str:
    return "required" if field.default is REQUIRED else json.dumps(field.default)


def _kind_text(field: Field) -> str:
    if field.kind is Kind.CHOICE:
        return "one of " + ", ".join(f"`{c}`" for c in field.choices)
    return str(field.kind.value)


def render_markdown() -> str:
    lines = [
        "# Node policy reference",
        "",
        "Generated from `src/ultraviolet/policy/schema.py` by `uvctl policy explain --markdown`;",
        "do not edit by hand. Unknown sections and keys are errors.",
        "",
    ]
    for section in SECTIONS:
        lines += [
            f"## [{section}]",
            "",
            SECTION_DOCS[section],
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for field in fields_of(section):
            lines.append(
                f"| `{field.name}` | {_kind_text(field)} | `{_default_text(field)}` | {field.doc} |"
            )
        lines.append("")
    return "\n".join(lines)


def explain(key: str | None = None) -> str:
    """Plain-text help for one `section.key`, one section, or everything."""
    chosen = [f for f in FIELDS if key is None or f.key == key or f.section == key]
    if not chosen:
        known = ", ".join(SECTIONS)
        raise PolicyError(f"no policy field or section {key!r}; sections: {known}")
    return "\n".join(
        f"{f.key} ({_kind_text(f)}, default {_default_text(f)})\n    {f.doc}" for f in chosen
    )


def schema_json() -> list[dict[str, Any]]:
    return [
        {
            "key": f.key,
            "kind": f.kind.value,
            "choices": list(f.choices),
            "default": None if f.default is REQUIRED else f.default,
            "required": f.required,
            "doc": f.doc,
        }
        for f in FIELDS
    ]
