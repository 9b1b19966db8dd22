"""Inputs built to do harm are refused: configs that would exhaust memory, and sample ids that a
spreadsheet would run as formulas."""

from __future__ import annotations

import pytest

from spray.config import load_config
from spray.errors import ConfigError
from spray.report import write_report
from spray.report.synthetic import synthetic_class, synthetic_run


def _alias_bomb(levels: int, width: int) -> str:
    lines = ["model:", "  factory: models.py:build", "  kwargs:", "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"    a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\ndata: {manifest: m.csv}\n"


@pytest.mark.timeout(20)
def test_a_yaml_alias_bomb_is_a_config_error(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels=6, width=10))  # a million values from seven lines
    with pytest.raises(ConfigError, match="aliases expanded"):
        load_config(path)


def test_a_huge_config_is_a_config_error(tmp_path):
    from spray.config import MAX_CONFIG_CHARS

    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_CHARS + "\nmodel: {factory: models.py:build}\n")
    with pytest.raises(ConfigError, match="at most"):
        load_config(path)


def test_ids_a_spreadsheet_would_run_are_quoted_in_samples_csv(tmp_path):
    result = synthetic_class(0, "zero", n_clusters=2, per_cluster=6, n_prototypes=1, image_size=8, embeddings=())
    dangerous = ["=HYPERLINK(\"http://x\")", "+1+2", "-cmd", "@SUM(A1)", "\tx", "\rx", "-1.5", "plain"]
    result.ids = dangerous + result.ids[len(dangerous):]
    write_report(tmp_path / "report", [result], synthetic_run())
    text = (tmp_path / "report" / "samples.csv").read_bytes().decode("utf-8")
    # each id begins a row; a bare carriage return inside a cell is not quoted by the CSV writer, so rows are
    # told apart by what starts them rather than parsed
    starts = [line.split(",")[0] for line in text.split("\n")[1:]]
    assert starts[:8] == ['"\'=HYPERLINK(""http://x"")"', "'+1+2", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx", "-1.5", "plain"]
