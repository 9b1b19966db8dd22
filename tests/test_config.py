"""The config schema: validated when loaded, errors by key path, paths relative to the config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spray.config import load_config
from spray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    return path


MINIMAL = "model: {factory: models.py:build, weights: model.pt}\ndata: {manifest: images/manifest.csv}\n"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + "output: out/report\n"))
    assert config.model.weights == tmp_path / "model.pt"
    assert config.model.factory == f"{tmp_path / 'models.py'}:build"
    assert config.data.manifest == tmp_path / "images" / "manifest.csv"
    assert config.output == tmp_path / "out" / "report"
    assert config.cache.directory == tmp_path / ".spray-cache"


def test_defaults_are_the_documented_ones(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.attribution.composite == "epsilon_plus_flat"
    assert config.preprocessing.size == (32, 32) and config.preprocessing.normalize == "sum_abs"
    assert config.analysis.neighbors == 10 and config.analysis.eigenvalues == 32
    assert config.audit.classes is None and config.dask.address is None


def test_an_unknown_key_suggests_the_closest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'preprocesing'; did you mean 'preprocessing'"):
        load_config(write(tmp_path, MINIMAL + "preprocesing: {size: [16, 16]}\n"))


def test_every_error_is_listed_with_its_key_path(tmp_path):
    text = MINIMAL + "analysis: {neighbors: 0, eigenvalues: lots}\nattribution: {device: tpu}\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert "analysis.neighbors" in message and "analysis.eigenvalues" in message
    assert "attribution.device" in message and "'auto', 'cpu' or 'cuda'" in message


def test_a_factory_without_a_callable_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.factory.*models\.py:build_model"):
        load_config(write(tmp_path, "model: {factory: models.py}\ndata: {manifest: m.csv}\n"))


def test_exactly_one_data_source(tmp_path):
    with pytest.raises(ConfigError, match=r"exactly one of data\.manifest"):
        load_config(write(tmp_path, "model: {factory: m.py:f}\ndata: {manifest: a.csv, root: imgs}\n"))


def test_mean_and_std_must_match_the_image_mode(tmp_path):
    text = MINIMAL.replace("manifest: images/manifest.csv", "manifest: m.csv, image: {mode: RGB, mean: [0.5, 0.5]}")
    with pytest.raises(ConfigError, match="mean has 2 values; mode RGB has 3"):
        load_config(write(tmp_path, text))


def test_the_cluster_range_must_fit_the_eigenvalues(tmp_path):
    with pytest.raises(ConfigError, match="max_clusters"):
        load_config(write(tmp_path, MINIMAL + "analysis: {eigenvalues: 8, max_clusters: 8}\n"))


def test_region_perturbation_needs_at_least_four_patches(tmp_path):
    """One 100 px patch on 64x64 images would make most-relevant-first and random orders the same, and every
    class read as "not better than random": refused before the run, naming the key and what would work."""
    image = "data: {manifest: images/manifest.csv, image: {mode: RGB, size: [64, 64]}}\n"
    model = "model: {factory: models.py:build, weights: model.pt}\n"
    with pytest.raises(ConfigError, match=r"evaluation.patch_size 100 cuts the 64x64 images into 1 patch.*at most 32"):
        load_config(write(tmp_path, model + image + "evaluation: {patch_size: 100}\n"))
    assert load_config(write(tmp_path, model + image + "evaluation: {patch_size: 32}\n")).evaluation.patch_size == 32
    assert not load_config(write(tmp_path, model + image + "evaluation: {patch_size: 100, enabled: false}\n")
                           ).evaluation.enabled


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"audit.yaml: line \d+, column \d+ is not valid YAML"):
        load_config(write(tmp_path, "model:\n  factory: x.py:f\n  kwargs: {a: 1\ndata: {root: x}\n"))


def test_the_demo_config_is_a_demo_section_and_an_ordinary_audit_config():
    from spray.config import read_config_file
    from spray.demo import load_demo

    path = ROOT / "pipelines" / "demo.yaml"
    demo, config = load_demo(read_config_file(path), base_dir=path.parent, source=path)
    assert demo is not None and demo.artifact == "watermark" and demo.directory == ROOT / "pipelines" / "demo-case"
    assert config.model.weights == ROOT / "pipelines" / "demo-case" / "model.pt"
    with pytest.raises(ConfigError, match=r"demo section is read by `python -m spray run`"):
        load_config(path)


def test_a_demo_section_error_names_its_key(tmp_path):
    from spray.config import read_config_file
    from spray.demo import load_demo

    path = write(tmp_path, MINIMAL + "demo: {artifact: logo}\n")
    with pytest.raises(ConfigError, match=r"demo\.artifact: Input should be 'watermark'"):
        load_demo(read_config_file(path), base_dir=tmp_path, source=path)


def test_a_key_of_another_attribution_method_names_the_method(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'attribution\.steps'; 'steps' applies to attribution\.method "
                                          r"integrated_gradients \(valid keys here: .*composite"):
        load_config(write(tmp_path, MINIMAL + "attribution: {composite: epsilon, steps: 8}\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'attribution\.composite'; 'composite' applies to "
                                          r"attribution\.method lrp"):
        load_config(write(tmp_path, MINIMAL + "attribution: {method: occlusion, composite: epsilon}\n"))
    config = load_config(write(tmp_path, MINIMAL + "attribution: {method: occlusion, patch: 8}\n"))
    assert config.attribution.method == "occlusion" and config.attribution.patch == 8


def test_an_unknown_method_or_composite_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown attribution\.method 'smoothgrd' \(did you mean 'smoothgrad'\?\)"):
        load_config(write(tmp_path, MINIMAL + "attribution: {method: smoothgrd}\n"))
    with pytest.raises(ConfigError, match=r"attribution\.composite: unknown composite 'epsilon_plus_flt' "
                                          r"\(did you mean 'epsilon_plus_flat'\?\)"):
        load_config(write(tmp_path, MINIMAL + "attribution: {composite: epsilon_plus_flt}\n"))


def test_rule_entries_are_checked_by_key_path(tmp_path):
    rules = ("attribution:\n  rules:\n    - {layers: [conv], rule: gama}\n"
             "    - {names: [fc], rule: gamma, epsilon: 0.1}\n    - {rule: flat}\n    - {layers: conv, rule: zbox}\n")
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, MINIMAL + rules))
    message = str(error.value)
    assert "attribution.rules.0: unknown LRP rule 'gama' (did you mean 'gamma'?)" in message
    assert "attribution.rules.1: rule 'gamma' takes gamma, stabilizer; got epsilon" in message
    assert "attribution.rules.2: give exactly one of 'names' (patterns) or 'layers' (layer types)" in message
    assert "attribution.rules.3: rule 'zbox' needs low and high" in message


def test_the_names_the_schema_accepts_are_the_engines():
    import inspect

    from spray import names
    from spray.lrp.composites import COMPOSITES, LAYER_TYPE_NAMES
    from spray.lrp.methods import METHODS
    from spray.lrp.rules import RULES

    assert names.COMPOSITE_NAMES == COMPOSITES
    assert tuple(LAYER_TYPE_NAMES) == names.LAYER_KINDS
    assert names.METHODS == METHODS
    assert list(names.RULE_PARAMETERS) == list(RULES)
    for rule, parameters in names.RULE_PARAMETERS.items():
        signature = {name: p for name, p in inspect.signature(RULES[rule].__init__).parameters.items()
                     if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        assert set(parameters) == set(signature), rule
        required = {name for name, p in signature.items() if p.default is inspect.Parameter.empty}
        assert required == set(names.REQUIRED_RULE_PARAMETERS.get(rule, ())), rule


def test_importing_the_config_does_not_import_torch():
    loaded = subprocess.run([sys.executable, "-c", "import sys, spray.config; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"


_TOKEN = """
import sys
from dask.base import tokenize
from spray.config import AnalysisConfig, LrpAttribution
print(tokenize(AnalysisConfig(neighbors=int(sys.argv[1])), LrpAttribution(rules=[{"layers": ["conv"], "rule": "flat"}])))
"""


def test_a_section_tokenizes_alike_in_every_process_and_differently_when_a_field_differs():
    def token(neighbors: int) -> str:
        return subprocess.run([sys.executable, "-c", _TOKEN, str(neighbors)], capture_output=True, text=True,
                              check=True).stdout.strip()

    first = token(10)
    assert token(10) == first and token(11) != first


def test_the_configuration_page_is_the_table_generated_from_the_schema():
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "config_table.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # docs/configuration.md is stale: run tools/config_table.py
