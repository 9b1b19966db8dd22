"""The documentation cannot drift: the benchmark tables are their JSON results', every relative link
resolves, and the README stays a short user guide with the quickstart. (That docs/configuration.md is the
schema's table: tests/test_config.py.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (
    'pip install "torch==2.13.0" -e . && python -m spray run pipelines/demo.yaml',
    'pip install "torch==2.13.0" -e ".[test]" && python -m pytest',
)


def tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_lists_every_key_of_every_section():
    from spray.config import SprayConfig

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for section, field in SprayConfig.model_fields.items():
        if not field.exclude:
            assert f"| `{section}` |" in page, section
    assert "| `analysis.neighbors` | int, ≥ 1 | `10` | k of the symmetric kNN affinity graph |" in page


def test_the_generated_benchmark_tables_are_their_json_results():
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert "<!-- generated:" in doc
    assert tool("benchmark_tables").render(doc) == doc, "docs/benchmarks.md is stale: run python tools/benchmark_tables.py"


def test_the_readme_is_a_short_guide_with_the_two_quickstart_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 10 * 1024
    for command in QUICKSTART:
        assert f"```bash\n{command}\n```" in readme
    assert 'python -m pytest -m "not e2e"' in readme


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
