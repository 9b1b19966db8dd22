"""The report as a browser shows it: a synthetic report rendered in headless Chromium.

Skipped where Debian's Chromium (/usr/bin/chromium) is not installed: ``apt-get install chromium``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spray.report import write_report
from spray.report.synthetic import synthetic_class, synthetic_run

CHROMIUM = Path("/usr/bin/chromium")
TOOL = Path(__file__).resolve().parents[1] / "tools" / "screenshot.py"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="headless browser check needs Debian's Chromium at /usr/bin/chromium"
)


def load_tool():
    """tools/ is not a package: load the screenshot tool from its file."""
    spec = importlib.util.spec_from_file_location("spray_screenshot_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """A two-class synthetic report (one flagged cluster), its full-page screenshot and network log."""
    tool = load_tool()
    tmp = tmp_path_factory.mktemp("browser")
    classes = [
        synthetic_class(0, "three", n_clusters=3, per_cluster=12, flagged_cluster=0, seed=0),
        synthetic_class(1, "five", n_clusters=2, per_cluster=12, flagged_cluster=None, seed=1),
    ]
    report = write_report(tmp / "report", classes, synthetic_run())
    png = tool.screenshot(report, tmp / "report.png", width=1280, chromium=str(CHROMIUM), net_log=tmp / "net.json")
    return tool, report, png, tmp / "net.json"


@pytest.mark.e2e
def test_the_report_renders_as_a_full_non_blank_page(shot):
    _, _, png, _ = shot
    image = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    height, width, _ = image.shape
    assert width == 1280
    assert height > 2500  # the whole page, not just the first window
    # Ink: pixels that are neither the page's background nor the white of its cards (text, figures, tiles).
    off_background = np.abs(image - np.array([245, 247, 250])).sum(axis=2) > 30
    off_white = np.abs(image - 255).sum(axis=2) > 30
    ink = (off_background & off_white).mean()
    assert ink > 0.05, f"the page is (almost) blank: {ink:.1%} ink"
    assert image.std() > 20
    # The flagged badge and the flagged cluster's border are drawn in the report's red.
    red = (np.abs(image - np.array([198, 40, 40])).sum(axis=2) < 40).sum()
    assert red > 200, "no red flag badge visible"


@pytest.mark.e2e
def test_the_page_requests_nothing_from_the_network(shot):
    tool, _, _, net_log = shot
    assert tool.page_requests(net_log) == []


@pytest.mark.e2e
def test_the_network_check_catches_a_page_that_loads_a_remote_resource(tmp_path):
    """Positive control: the network check is not vacuous."""
    page = tmp_path / "remote.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/pixel.png"></body></html>', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(TOOL), str(page), str(tmp_path / "remote.png"), "--height", "300", "--check-offline"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "http://127.0.0.1:9/pixel.png" in done.stderr
