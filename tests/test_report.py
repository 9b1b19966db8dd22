"""Specification of stage 4b: ``spray.report.write_report`` and the three files it writes.

The audit results are built here by hand, small and deliberately hostile: sample ids, class names, evidence,
config values and paths carry HTML metacharacters, so that any unescaped string shows up in the page.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spray.flag import Evidence, Line
from spray.report import write_report
from spray.report.figures import CLUSTER_COLOURS, FLAGGED_COLOURS, cluster_colours
from spray.report.images import heatmap_rgb, mask_outline
from spray.report.summary import to_jsonable
from spray.report.synthetic import synthetic_class, synthetic_run
from spray.results import ClassResult, ClusterResult, RunInfo, SkippedClass

XSS_ID = "<script>alert(1)</script>"
AMP_NAME = "Cats & Dogs <b>"
MAP = 8  # side of the preprocessed maps in these tests
IMG = 12  # side of the prototype images


def make_cluster(
    cluster_id: int,
    members: list[str],
    *,
    score: float,
    flagged: bool,
    region: bool = True,
    seed: int = 0,
) -> ClusterResult:
    rng = np.random.default_rng(seed)
    mask = np.zeros((MAP, MAP), dtype=bool)
    mask[:3, :3] = True
    prototypes = members[:3]
    return ClusterResult(
        id=cluster_id,
        members=members,
        evidence=Evidence(score=score, flagged=flagged, region_area=0.5, masking_drop=0.25),
        mean_map=rng.normal(size=(MAP, MAP)).astype(np.float32),
        region=mask if region else None,
        prototypes=prototypes,
        prototype_images=[rng.integers(0, 256, size=(IMG, IMG, 3), dtype=np.uint8) for _ in prototypes],
        prototype_heatmaps=[rng.normal(size=(IMG, IMG)).astype(np.float32) for _ in prototypes],
    )


def make_class(
    class_index: int,
    name: str,
    *,
    flagged_cluster: int | None = 1,
    embeddings: bool = True,
    region: bool = True,
    ids: list[str] | None = None,
) -> ClassResult:
    """A class of 9 samples in 3 clusters of 3; ``flagged_cluster`` (if any) is flagged, with the top score."""
    ids = ids or [f"c{class_index}/img_{i:03d}.png" for i in range(9)]
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    scores = {0: 0.2, 1: 0.1, 2: 0.3}
    if flagged_cluster is not None:
        scores[flagged_cluster] = 0.9
    clusters = [
        make_cluster(
            c,
            [ids[i] for i in np.flatnonzero(labels == c)],
            score=scores[c],
            flagged=c == flagged_cluster,
            region=region or c != 0,  # `region=False` leaves cluster 0 without a region
            seed=c,
        )
        for c in (2, 0, 1)  # deliberately not in report order: the report sorts
    ]
    rng = np.random.default_rng(class_index)
    return ClassResult(
        class_index=class_index,
        class_name=name,
        ids=ids,
        labels=np.full(9, class_index, dtype=np.int64),
        predictions=np.array([class_index] * 8 + [class_index + 1], dtype=np.int64),
        logits=rng.normal(5, 1, 9).astype(np.float32),
        conservation=np.array([0.99, 1.0, 1.01, 0.98, np.nan, 1.0, 1.02, 0.97, 1.0]),
        eigenvalues=np.array([0.0, 0.01, 0.02, 0.4, 0.45, 0.5]),
        n_clusters=3,
        cluster_labels=labels,
        embeddings=(
            {"tsne": rng.normal(size=(9, 2)), "umap": rng.normal(size=(9, 2))} if embeddings else {}
        ),
        clusters=clusters,
        class_mean_map=rng.normal(size=(MAP, MAP)).astype(np.float32),
        notes=["graph has 2 connected components & <one> was merged"],
    )


def make_run(**overrides) -> RunInfo:
    values = dict(
        config_path="configs/<audit>&.yaml",
        config={"model": {"factory": "m.py:<build>", "weights": Path("w&.pt")}, "audit": {"classes": [3, 5]}},
        model="m.py:<build> with w&.pt",
        data="manifest <v2>.csv, 27 samples",
        versions={"torch": "2.5.1", "numpy": np.__version__},
        started="2026-11-26T06:00:00+00:00",
        duration_s=125.5,
        device="cuda:0 <H100>",
        skipped_samples=[("broken/<x>.png", "cannot identify image file <PIL>")],
        skipped_classes=[SkippedClass(class_index=7, class_name="seven & co", reason="4 samples < k+1 = 11")],
        stages={"attribute": {"computed": 2, "cached": 1}, "analyse": {"computed": 0, "cached": 3}},
    )
    values.update(overrides)
    return RunInfo(**values)


@pytest.fixture(scope="module")
def standard_report(tmp_path_factory) -> tuple[Path, list[ClassResult]]:
    """Two classes: class 3 with a flagged cluster and a hostile sample id, class 5 clean with a hostile name.

    Written once for the module (tests only read it): rendering the figures is the slow part.
    """
    tmp_path = tmp_path_factory.mktemp("standard")
    hostile_ids = [XSS_ID] + [f"c3/img_{i:03d}.png" for i in range(1, 9)]
    classes = [
        make_class(5, AMP_NAME, flagged_cluster=None),
        make_class(3, "three", flagged_cluster=0, ids=hostile_ids),
    ]
    write_report(tmp_path / "out", classes, make_run())
    return tmp_path / "out", classes


class _Collector(HTMLParser):
    """Every start tag with its attributes, and the text of every <style> element."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


# --- the files -------------------------------------------------------------------------------------------


def test_write_report_creates_the_folder_and_writes_three_files(standard_report):
    out, _ = standard_report
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "samples.csv", "summary.json"]


def test_write_report_returns_the_html_path_and_overwrites_atomically(tmp_path):
    out = tmp_path / "deep" / "out"
    classes = [make_class(1, "one")]
    first = write_report(out, classes, make_run())
    second = write_report(out, classes, make_run(duration_s=1.0))
    assert first == second == out / "index.html"
    # No temporary file is left behind, and the files are readable by others like any written file.
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "samples.csv", "summary.json"]
    assert all(p.stat().st_mode & 0o044 for p in out.iterdir())


# --- summary.json ----------------------------------------------------------------------------------------


def test_summary_json_follows_the_public_contract(standard_report):
    out, _classes = standard_report
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {"classes", "skipped_classes", "skipped_samples", "run"} <= set(summary)
    assert [c["class"] for c in summary["classes"]] == [5, 3]  # the order the classes were given in
    entry = summary["classes"][1]
    assert entry["name"] == "three"
    assert entry["n_samples"] == 9
    assert entry["eigenvalues"] == pytest.approx([0.0, 0.01, 0.02, 0.4, 0.45, 0.5])
    assert entry["n_clusters"] == 3
    assert entry["flagged"] is True
    for cluster in entry["clusters"]:
        assert {"id", "size", "members", "score", "flagged", "evidence"} <= set(cluster)
        assert cluster["size"] == len(cluster["members"]) == 3
        assert isinstance(cluster["flagged"], bool)
    first = entry["clusters"][0]
    assert first["id"] == 0 and first["flagged"] is True and first["score"] == pytest.approx(0.9)
    assert first["members"][0] == XSS_ID  # data, not markup: stored as is
    assert first["evidence"] == {"region_area": 0.5, "masking_drop": 0.25}
    assert summary["classes"][0]["flagged"] is False
    assert summary["skipped_classes"] == [{"class": 7, "name": "seven & co", "reason": "4 samples < k+1 = 11"}]
    assert summary["skipped_samples"] == [{"id": "broken/<x>.png", "reason": "cannot identify image file <PIL>"}]
    run = summary["run"]
    assert run["model"] == "m.py:<build> with w&.pt"
    assert run["config"]["model"]["weights"] == "w&.pt"  # paths as strings
    assert run["duration_s"] == 125.5 and run["device"] == "cuda:0 <H100>"
    assert run["stages"]["attribute"] == {"computed": 2, "cached": 1}


def test_summary_clusters_are_flagged_first_then_by_score(standard_report):
    out, _ = standard_report
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in summary["classes"][1]["clusters"]] == [0, 2, 1]  # flagged 0.9, then 0.3, 0.1
    assert [c["id"] for c in summary["classes"][0]["clusters"]] == [2, 0, 1]  # no flag: 0.3, 0.2, 0.1


def test_summary_json_is_strict_json_with_null_for_nan(tmp_path):
    result = make_class(1, "one")
    result.clusters[0].evidence = Evidence(
        score=float("nan"), consistency=Line("consistency", float("nan"), 0.9), weakest="consistency",
        masking_drop=np.float64("inf"), region_area=np.float32(0.25), joined_by_pattern=np.int64(3),
        not_scored="consistency could not be measured",
    )
    write_report(tmp_path, [result], make_run())
    text = (tmp_path / "summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    cluster = next(c for c in json.loads(text)["classes"][0]["clusters"] if c["id"] == result.clusters[0].id)
    assert cluster["score"] is None
    assert cluster["evidence"] == {
        "region_area": 0.25, "consistency": None, "masking_drop": None,
        "not_scored": "consistency could not be measured",
        "weakest_evidence": "consistency", "thresholds": {"consistency": 0.9}, "joined_by_pattern": 3,
    }


def test_to_jsonable_converts_numpy_paths_and_non_finite_numbers():
    assert to_jsonable({1: np.arange(2), "p": Path("a/b"), "t": (np.float32(0.5), float("-inf"))}) == {
        "1": [0, 1], "p": "a/b", "t": [0.5, None]
    }


# --- samples.csv -----------------------------------------------------------------------------------------


def test_samples_csv_has_one_row_per_audited_sample_and_round_trips_with_pandas(standard_report):
    out, classes = standard_report
    frame = pd.read_csv(out / "samples.csv", dtype={"id": str})
    assert list(frame.columns) == [
        "id", "class", "label", "prediction", "logit", "cluster", "flagged", "conservation", "aopc_morf", "aopc_random",
        "aopc_gain",
        "tsne_x", "tsne_y", "umap_x", "umap_y",
    ]
    assert len(frame) == sum(result.n_samples for result in classes)
    rows = frame[frame["class"] == 3].reset_index(drop=True)
    result = classes[1]
    assert rows["id"].tolist() == result.ids  # including the hostile id, unharmed
    assert rows["label"].tolist() == result.labels.tolist()
    assert rows["prediction"].tolist() == result.predictions.tolist()
    np.testing.assert_allclose(rows["logit"], result.logits, rtol=1e-6)
    assert rows["cluster"].tolist() == result.cluster_labels.tolist()
    assert rows["flagged"].tolist() == [c == 0 for c in result.cluster_labels]  # cluster 0 is flagged
    np.testing.assert_allclose(rows["conservation"], result.conservation)  # NaN stays NaN
    np.testing.assert_allclose(rows[["umap_x", "umap_y"]].to_numpy(), result.embeddings["umap"])
    assert not frame[frame["class"] == 5]["flagged"].any()


def test_samples_csv_keeps_ids_with_commas_quotes_and_newlines(tmp_path):
    ids = ['a,b.png', 'say "hi".png', "two\nlines.png", "007"] + [f"x{i}" for i in range(5)]
    write_report(tmp_path, [make_class(0, "zero", ids=ids)], make_run())
    frame = pd.read_csv(tmp_path / "samples.csv", dtype={"id": str})
    assert frame["id"].tolist() == ids


def test_samples_csv_has_embedding_columns_only_for_embeddings_present(tmp_path):
    write_report(tmp_path / "none", [make_class(0, "zero", embeddings=False)], make_run())
    assert "tsne_x" not in pd.read_csv(tmp_path / "none" / "samples.csv").columns
    mixed = [make_class(0, "zero", embeddings=False), make_class(1, "one")]
    write_report(tmp_path / "mixed", mixed, make_run())
    frame = pd.read_csv(tmp_path / "mixed" / "samples.csv")
    assert frame.loc[frame["class"] == 0, "tsne_x"].isna().all()
    assert frame.loc[frame["class"] == 1, "tsne_x"].notna().all()


def test_misaligned_per_sample_arrays_are_refused_with_the_class_named(tmp_path):
    result = make_class(4, "four")
    result.logits = result.logits[:-1]
    with pytest.raises(ValueError, match=r"class 4 .*logits has 8 entries.*9"):
        write_report(tmp_path, [result], make_run())


# --- index.html: self-contained and escaped ------------------------------------------------------------


def test_html_loads_nothing_from_outside_the_file(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    document = parse(page)
    for tag, attrs in document.tags:
        assert tag not in {"script", "link", "iframe", "object", "embed", "base"}, tag
        for name in ("src", "href", "srcset", "poster", "data", "action"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:80])
    css = "\n".join(document.styles)
    assert "@import" not in css and "url(" not in css
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.I)


def test_html_escapes_every_string_from_data(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()  # the report has no script of its own, so any would be injected
    raw_strings = [
        XSS_ID, AMP_NAME, "<one>", "configs/<audit>&.yaml", "m.py:<build>", "w&.pt", "manifest <v2>.csv",
        "cuda:0 <H100>", "broken/<x>.png", "<PIL>", "seven & co",
    ]
    for raw in raw_strings:
        assert raw not in page, raw
        assert html.escape(raw, quote=False) in page or html.escape(raw) in page, raw


def test_html_escapes_evidence_text(tmp_path):
    result = make_class(0, "zero")
    result.clusters[0].evidence = Evidence(not_scored="<value & more>")
    write_report(tmp_path, [result], make_run())
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<value & more>" not in page and "&lt;value &amp; more&gt;" in page


def test_evidence_with_thresholds_shows_each_test_and_the_weakest_line(tmp_path):
    """spray.flag's convention: ``thresholds`` names the minimum of each measurement, ``weakest_evidence`` the
    measurement that set the score; the table shows value, threshold and pass/fail side by side."""
    result = make_class(0, "zero", flagged_cluster=None)
    result.clusters[0].evidence = Evidence(  # clusters[0] is cluster 2, the first in the report
        score=0.5, consistency=Line("consistency", 0.95, 0.85), necessity=Line("necessity", 0.1, 0.2),
        masking_drop=0.4, weakest="necessity",
    )
    write_report(tmp_path, [result], make_run())
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    table = page[page.index('id="class-0-cluster-2"'):]
    table = table[table.index("evidence-table"): table.index('<div class="prototypes-block">')]
    rows = dict(re.findall(r'<span class="key">([^<]+)</span>(?:<span class="meaning">[^<]*</span>)?</th>\s*<td[^>]*>.*?</td>\s*'
                           r'<td class="test">(.*?)</td>',
                           table, re.S))
    assert '≥ 0.85</span> <span class="pass"' in rows["consistency"]
    assert '≥ 0.2</span> <span class="fail"' in rows["necessity"]
    assert rows["masking_drop"] == ""  # no threshold: shown as measured
    assert '<tr class="weakest"' in table and "thresholds." not in table


def test_a_long_list_of_skipped_samples_is_cut_in_the_page_but_complete_in_the_summary(tmp_path):
    skipped = [(f"img/{i}.png", "missing") for i in range(250)]
    write_report(tmp_path, [make_class(0, "zero")], make_run(skipped_samples=skipped))
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "img/199.png" in page and "img/200.png" not in page
    assert "The first 200 are listed; summary.json lists all." in page
    assert len(json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["skipped_samples"]) == 250


# --- index.html: content and order ---------------------------------------------------------------------


def cluster_anchor_order(page: str, class_index: int) -> list[int]:
    pattern = rf'<article class="cluster[^"]*" id="class-{class_index}-cluster-(\d+)"'
    return [int(m) for m in re.findall(pattern, page)]


def test_flagged_clusters_come_before_unflagged_ones(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    assert cluster_anchor_order(page, 3) == [0, 2, 1]
    assert cluster_anchor_order(page, 5) == [2, 0, 1]
    flagged_article = re.search(r'<article class="cluster cluster-flagged" id="class-3-cluster-0">', page)
    assert flagged_article and page.count('class="cluster cluster-flagged"') == 1


def test_header_verdict_names_the_flagged_clusters_and_classes(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    verdict = page[page.index('id="verdict"'): page.index('id="summary"')]
    assert "1 cluster flagged in" in verdict and "1 of 2 audited classes" in verdict
    assert 'href="#class-3-cluster-0"' in verdict
    assert 'href="#skipped-classes"' in verdict and 'href="#skipped-samples"' in verdict


def test_summary_table_ranks_classes_by_evidence_and_links_to_each_section(tmp_path):
    classes = [make_class(i, f"class {i}", flagged_cluster=None) for i in range(3)]
    # the strongest evidence, though not flagged
    classes[1].clusters[0].evidence = dataclasses.replace(classes[1].clusters[0].evidence, score=0.95)
    # flagged classes rank first
    classes[2].clusters[1].evidence = dataclasses.replace(classes[2].clusters[1].evidence, flagged=True)
    write_report(tmp_path, classes, make_run())
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    start = page.index('<table class="data summary-table">')
    table = page[start: page.index("</table>", start)]
    assert re.findall(r'href="#class-(\d+)"', table) == ["2", "1", "0"]
    for index in range(3):
        assert f'<section class="card class-section" id="class-{index}">' in page


def test_a_class_named_by_its_index_is_not_named_twice(tmp_path):
    write_report(tmp_path, [make_class(3, "3")], make_run())
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<h2>Class 3</h2>" in page and "3 · 3" not in page


def test_each_class_section_has_its_figures_and_numbers(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    section = page[page.index('id="class-3"'): page.index('id="class-5"')]
    for alt in ("Eigenvalue spectrum of class 3", "LRP conservation of class 3", "Mean heatmap of class 3",
                "Embeddings of class 3"):
        assert re.search(rf'<img [^>]*src="data:image/png;base64,[^"]+" alt="{alt}"', section), alt
    assert "t-SNE and UMAP" in section
    assert "k = 3" in section
    # Conservation: median and range of the finite values, and the count of missing ones.
    assert '<span class="fact-value">1</span><span class="fact-label">conservation, median' in section
    assert "(0.97 – 1.02)" in section and "1 sample(s) without a finite value" in section
    # Each cluster: its size, score, mean heatmap, evidence table and prototype pairs with their ids.
    assert section.count("Mean heatmap of cluster") == 3
    assert section.count('<table class="data evidence-table">') == 3
    assert section.count('alt="Relevance of sample') == 9
    assert html.escape(XSS_ID) in section
    assert "masking_drop" in section and "0.25" in section
    assert "graph has 2 connected components &amp; &lt;one&gt; was merged" in section  # notes


def test_flagged_and_clean_clusters_carry_distinct_badges(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    head_of = lambda c: page[page.index(f'id="class-3-cluster-{c}"'):][:600]  # noqa: E731
    assert '<span class="badge badge-flagged">Flagged</span>' in head_of(0)
    assert '<span class="badge badge-clean">Not flagged</span>' in head_of(2)


def test_run_metadata_is_shown(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    run = page[page.index('id="run"'):]
    for text in ("2 min 06 s", "2026-11-26T06:00:00+00:00", "cuda:0 &lt;H100&gt;", "torch", "2.5.1",
                 "attribute", "analyse"):
        assert text in run, text
    assert "weights: w&amp;.pt" in run  # the config, as YAML


# --- index.html: the unusual cases ------------------------------------------------------------------


def test_report_without_embeddings_regions_or_flags(tmp_path):
    result = make_class(2, "two", flagged_cluster=None, embeddings=False, region=False)
    write_report(tmp_path, [result], make_run(skipped_samples=[], skipped_classes=[]))
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "No cluster flagged in 1 audited class" in page
    assert 'class="badge badge-flagged"' not in page and 'class="cluster cluster-flagged"' not in page
    assert "No 2-D embedding was computed for this class." in page
    assert "No region: too small to score" in page
    assert 'id="skipped-classes"' not in page and 'id="skipped-samples"' not in page
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["classes"][0]["flagged"] is False and summary["skipped_samples"] == []


def test_report_lists_skipped_classes_and_samples_with_reasons(standard_report):
    out, _ = standard_report
    page = (out / "index.html").read_text(encoding="utf-8")
    skipped = page[page.index('id="skipped-classes"'): page.index('id="run"')]
    assert "seven &amp; co" in skipped and "4 samples &lt; k+1 = 11" in skipped
    assert "broken/&lt;x&gt;.png" in skipped and "cannot identify image file &lt;PIL&gt;" in skipped


def test_report_when_every_class_was_skipped(tmp_path):
    path = write_report(tmp_path, [], make_run())
    page = path.read_text(encoding="utf-8")
    assert "No class was audited" in page and "seven &amp; co" in page
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["classes"] == []
    assert pd.read_csv(tmp_path / "samples.csv").empty


def test_report_of_ten_classes_of_ten_clusters_stays_small(tmp_path):
    classes = [
        synthetic_class(i, f"class {i}", n_clusters=10, per_cluster=6, n_prototypes=6, image_size=32,
                        flagged_cluster=0 if i == 0 else None, seed=i)
        for i in range(10)
    ]
    path = write_report(tmp_path, classes, synthetic_run())
    page = path.read_text(encoding="utf-8")
    assert page.count('alt="Relevance of sample') == 600
    assert path.stat().st_size < 8_000_000


# --- heatmap colours -------------------------------------------------------------------------------------


def test_heatmap_colours_are_centred_on_zero_with_symmetric_limits():
    rgb = heatmap_rgb(np.array([[-2.0, 0.0, 2.0, 1.0]]))
    negative, zero, positive, half = (tuple(int(v) for v in rgb[0, i]) for i in range(4))
    assert min(zero) >= 250  # no relevance is white (up to the colormap's 256-entry table)
    assert positive[0] > 200 and positive[2] < 50  # evidence for the class is red
    assert negative[2] > 200 and negative[0] < 50  # evidence against it is blue
    assert half[0] == 255 and 100 < half[1] < 155  # half the max: a lighter red, on the same scale
    assert not math.isnan(rgb.astype(float).sum())


def test_red_marks_flagged_clusters_only():
    colours = cluster_colours([0, 1, 2, 3], flagged_ids=[2])
    assert colours[2] == FLAGGED_COLOURS[0]
    assert colours[0] == cluster_colours([0], [])[0]  # a clean cluster keeps its colour
    for colour in CLUSTER_COLOURS:  # no red in the palette of clean clusters
        r, g, b = (int(colour[i: i + 2], 16) for i in (1, 3, 5))
        assert not (r > 150 and g < 100 and b < 100), colour


def test_region_outline_surrounds_the_region_without_covering_it():
    mask = np.zeros((7, 7), dtype=bool)
    mask[2:4, 2:4] = True
    outline = mask_outline(mask)
    assert not (outline & mask).any()
    assert outline.sum() == 16 - 4  # the 4 x 4 square around the 2 x 2 region, less the region
