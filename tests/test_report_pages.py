"""A report of many classes: index.html ranks them all and links to one self-contained page per class."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spray.report import write_report
from spray.report.html import MAX_CLASSES_ON_ONE_PAGE
from spray.report.synthetic import synthetic_class, synthetic_run

N_CLASSES = MAX_CLASSES_ON_ONE_PAGE + 5


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (tag, url) of every href and src
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [(tag, attrs[name]) for name in ("href", "src") if attrs.get(name)]
        if attrs.get("id"):
            self.ids.add(attrs["id"])


def links(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def paged_report(tmp_path_factory) -> Path:
    """25 small classes; class 7 has a flagged cluster, class 12 the strongest unflagged evidence."""
    out = tmp_path_factory.mktemp("paged") / "out"
    classes = [
        synthetic_class(i, f"class {i}", n_clusters=2, per_cluster=6, n_prototypes=1, image_size=8,
                        flagged_cluster=0 if i == 7 else None, embeddings=("tsne",), seed=i)
        for i in range(N_CLASSES)
    ]
    for result in classes:
        for cluster in result.clusters:
            score = 0.95 if result.class_index == 12 and cluster.id == 1 else min(cluster.score, 0.5)
            cluster.evidence = dataclasses.replace(cluster.evidence, score=score)
    (out / "classes").mkdir(parents=True)
    (out / "classes" / "99.html").write_text("a page of an earlier run")
    (out / "classes" / ".3.html.k2j4x9.tmp").write_text("left by a writer killed in an earlier run")
    write_report(out, classes, synthetic_run())
    return out


@pytest.mark.e2e
def test_more_classes_than_fit_on_one_page_get_a_page_each(paged_report):
    pages = sorted(p.name for p in (paged_report / "classes").iterdir())
    assert pages == sorted(f"{i}.html" for i in range(N_CLASSES))  # the stale 99.html and .tmp are gone
    index = (paged_report / "index.html").read_text(encoding="utf-8")
    assert 'class="card class-section"' not in index  # the sections are on the class pages only


@pytest.mark.e2e
def test_the_summary_table_ranks_every_class_and_links_to_its_page(paged_report):
    index = (paged_report / "index.html").read_text(encoding="utf-8")
    start = index.index('<table class="data summary-table">')
    table = index[start: index.index("</table>", start)]
    targets = re.findall(r'href="classes/(\d+)\.html#class-(\d+)"', table)
    assert len(targets) == N_CLASSES and all(page == anchor for page, anchor in targets)
    assert [int(page) for page, _ in targets[:2]] == [7, 12]  # flagged first, then by evidence
    verdict = index[index.index('id="verdict"'): index.index('id="summary"')]
    assert re.search(r'href="classes/7\.html#class-7-cluster-\d+"', verdict)


@pytest.mark.e2e
def test_every_link_resolves_to_a_file_and_anchor_of_the_report(paged_report):
    pages = [paged_report / "index.html", *sorted((paged_report / "classes").glob("*.html"))]
    parsed = {page.resolve(): links(page) for page in pages}
    for page, found in parsed.items():
        for _tag, url in found.links:
            if url.startswith("data:image/png;base64,"):
                continue
            assert not re.match(r"^[a-z]+:|^//", url), (page.name, url)  # nothing from the network
            target, _, anchor = url.partition("#")
            target_page = (page.parent / target).resolve() if target else page
            assert target_page in parsed, (page.name, url)
            assert not anchor or anchor in parsed[target_page].ids, (page.name, url)


@pytest.mark.e2e
def test_a_class_page_is_self_contained_and_shows_its_class(paged_report):
    page = (paged_report / "classes" / "7.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert '<section class="card class-section" id="class-7">' in page
    assert 'class="cluster cluster-flagged"' in page and "Rank</b> 1 of 25" in page
    assert 'href="../index.html#summary"' in page


def test_few_classes_stay_on_one_page_and_old_class_pages_go(tmp_path):
    (tmp_path / "classes").mkdir()
    (tmp_path / "classes" / "3.html").write_text("a page of an earlier, larger run")
    write_report(tmp_path, [synthetic_class(3, "three", n_clusters=2, per_cluster=6, n_prototypes=1,
                                            image_size=8, embeddings=())], synthetic_run())
    assert not (tmp_path / "classes").exists()  # the report is replaced as a whole: no stale page survives
    assert 'id="class-3"' in (tmp_path / "index.html").read_text(encoding="utf-8")
