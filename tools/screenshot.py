#!/usr/bin/env python3
"""Full-page screenshot of a report with headless Chromium (a dev tool: design reviews, the README image).

    python tools/screenshot.py REPORT.html OUT.png [--width 1280] [--height N] [--chromium PATH]
                               [--net-log LOG.json] [--check-offline]

Without ``--height`` the page's full height is measured first: Chromium's ``--screenshot`` captures only the
window, so a copy of the page that writes its scroll height into the DOM is loaded with ``--dump-dom``
and the window is then sized to fit. The browser runs with networking features off and a throw-away
profile; the report itself must not need the network (tests check that).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_CHROMIUM = "/usr/bin/chromium"
MAX_HEIGHT = 50_000  # pixels; bounds the screenshot's memory (1280 x 50,000 RGBA is 256 MB): longer pages are cut
_HEIGHT_PROBE = (
    "<script>document.documentElement.setAttribute('data-page-height',"
    " String(Math.ceil(document.documentElement.scrollHeight)));</script>"
)


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium binary to use: ``explicit``, /usr/bin/chromium, or one on PATH; None when absent."""
    for candidate in (explicit, DEFAULT_CHROMIUM, "chromium", "chromium-browser", "google-chrome"):
        if candidate and (Path(candidate).is_file() or shutil.which(candidate)):
            return shutil.which(candidate) or candidate
    return None


def chromium_command(chromium: str, profile: Path, width: int, height: int, *extra: str) -> list[str]:
    """The headless Chromium command line, with background networking and first-run work turned off."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",  # containers commonly run as root, where the sandbox cannot start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *extra,
    ]


def page_height(chromium: str, report: Path, width: int, timeout: float = 60.0) -> int:
    """The rendered height of ``report`` at ``width`` CSS pixels."""
    html = report.read_text(encoding="utf-8")
    probe = html.replace("</body>", _HEIGHT_PROBE + "</body>", 1) if "</body>" in html else html + _HEIGHT_PROBE
    with tempfile.TemporaryDirectory(prefix="spray-shot-") as tmp:
        # The probe copy sits next to nothing but itself: the report is self-contained by contract.
        copy = Path(tmp) / "probe.html"
        copy.write_text(probe, encoding="utf-8")
        command = chromium_command(chromium, Path(tmp) / "profile", width, 800, "--dump-dom", copy.as_uri())
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    match = re.search(r'data-page-height="(\d+)"', done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"could not measure the page height with {chromium}: {done.stderr[-2000:]}")
    return int(match.group(1))


def screenshot(
    report: Path,
    output: Path,
    width: int = 1280,
    height: int | None = None,
    chromium: str | None = None,
    net_log: Path | None = None,
    timeout: float = 120.0,
) -> Path:
    """Take a screenshot of ``report`` (full page unless ``height`` is given) into ``output`` (PNG).

    ``net_log``: also write Chromium's network log there (JSON), to check what the page requested.
    Raises FileNotFoundError when no Chromium is found and RuntimeError when it fails.
    """
    binary = find_chromium(chromium)
    if binary is None:
        raise FileNotFoundError("no Chromium found: install it (apt-get install chromium) or pass --chromium")
    report = Path(report).resolve()
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    if height is None:
        height = min(page_height(binary, report, width), MAX_HEIGHT)
    extra = [f"--screenshot={output}"]
    if net_log is not None:
        extra.append(f"--log-net-log={Path(net_log).resolve()}")
    with tempfile.TemporaryDirectory(prefix="spray-shot-") as tmp:
        command = chromium_command(binary, Path(tmp) / "profile", width, height, *extra, report.as_uri())
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not output.is_file():
        raise RuntimeError(f"{binary} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return output


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked the network for, read from a Chromium net log (``--log-net-log``).

    The browser makes requests of its own (update checks, account probes) even with background networking
    disabled; those carry the initiator "not an origin" and no page in their isolation key. A request made by
    a page opened from a file has the opaque initiator "null" and "file://" in its isolation key.
    """
    log = json.loads(Path(net_log).read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") != start_job or "url" not in params:
            continue
        browser_internal = params.get("initiator") == "not an origin" and "file://" not in str(
            params.get("network_isolation_key", "")
        )
        if not browser_internal:
            urls.append(params["url"])
    return urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Full-page screenshot of an HTML report with headless Chromium.")
    parser.add_argument("report", type=Path, help="the HTML file, e.g. out/demo/index.html")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels (default 1280)")
    parser.add_argument("--height", type=int, default=None, help="window height (default: the full page)")
    parser.add_argument("--chromium", default=None, help=f"the browser binary (default {DEFAULT_CHROMIUM})")
    parser.add_argument("--net-log", type=Path, default=None, help="also write Chromium's network log (JSON)")
    parser.add_argument("--check-offline", action="store_true",
                        help="fail (exit 2) when the page requested anything from the network")
    args = parser.parse_args(argv)
    net_log = args.net_log
    with tempfile.TemporaryDirectory(prefix="spray-shot-") as tmp:
        if args.check_offline and net_log is None:
            net_log = Path(tmp) / "net-log.json"
        try:
            path = screenshot(args.report, args.output, args.width, args.height, args.chromium, net_log)
        except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"screenshot failed: {error}", file=sys.stderr)
            return 1
        print(path)
        if args.check_offline:
            requested = page_requests(net_log)
            for url in requested:
                print(f"network request by the page: {url}", file=sys.stderr)
            if requested:
                return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
