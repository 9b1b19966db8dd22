"""Print the Markdown table of every config key with its default and meaning (pasted into README.md).

    python tools/config_reference.py
"""

from __future__ import annotations

import json
from typing import Any

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
        nested = next((a for a in getattr(annotation, "__args__", (annotation,))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is not None:
            out.append((key, "section" if field.is_required() or field.default is not None else "optional section",
                        field.description or ""))
            out += rows(nested, key + ".")
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


def main() -> None:
    print("| key | default | meaning |\n|---|---|---|")
    for key, default, meaning in rows(SprayConfig):
        print(f"| `{key}` | {default} | {meaning.replace('|', '/')} |")


if __name__ == "__main__":
    main()
