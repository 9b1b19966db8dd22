"""Print the Markdown table of every config key with its default and meaning (pasted into README.md).

    python tools/config_reference.py
"""

from __future__ import annotations

import json
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from spray.config import SprayConfig


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{name}"
        annotation = field.annotation
        nested = [a for a in getattr(annotation, "__args__", (annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            out.append((key, "section" if field.is_required() or field.default is not None else "optional section",
                        field.description or ""))
            out += rows(nested[0], key + ".") if len(nested) == 1 else union_rows(nested, key + ".")
            continue
        if field.is_required():
            default = "required"
        else:
            value: Any = field.default_factory() if field.default_factory is not None else field.default
            if value is PydanticUndefined:
                value = None
            default = "`" + json.dumps(value if not isinstance(value, tuple) else list(value), default=str) + "`"
        out.append((key, default, field.description or ""))
    return out


def union_rows(members: list[type[BaseModel]], prefix: str) -> list[tuple[str, str, str]]:
    """The keys of a section chosen by ``method``: those of every method once, then each method's own, its
    meaning prefixed with the methods it applies to."""
    methods = {member: get_args(member.model_fields["method"].annotation) for member in members}
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for member in members:
        for key, default, meaning in rows(member, prefix):
            name = key[len(prefix):]
            if name in seen:
                continue
            seen.add(name)
            owners = [m for other in members if name in other.model_fields for m in methods[other]]
            if len(owners) < sum(len(m) for m in methods.values()):
                meaning = f"{', '.join(owners)} only: {meaning}"
            out.append((key, default, meaning))
    return sorted(out, key=lambda row: row[0] != f"{prefix}method")


def main() -> None:
    print("| key | default | meaning |\n|---|---|---|")
    for key, default, meaning in rows(SprayConfig):
        print(f"| `{key}` | {default} | {meaning.replace('|', '/')} |")


if __name__ == "__main__":
    main()
