"""The report in a real browser: headless Chromium opens the page from a file path, the charts
draw, no console error, and a screenshot lands in the test's temp folder.

Outside CI, no Chromium means a skip with the reason; under CI=true it is a failure (`make
install` installs Debian's chromium where it is missing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import IN_CI, REPO
from safesample.report import ReportOptions, load_inputs, report_table
from test_report import build_inputs

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    message = ("needs headless Chromium, which is not installed; `make install` installs it as root "
               "(apt-get install -y chromium)")
    if IN_CI:
        pytest.fail(message + " (CI=true: CI must run the browser test)")
    pytest.skip(message)


def browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def check_in_browser(html: str, folder: Path, name: str, charts: list[str]) -> dict[str, str]:
    """Open the page, check what drew, screenshot it; returns the body's data-* attributes."""
    page = folder / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    t0 = time.perf_counter()
    dom = browse(page, folder / "profile", "--window-size=1280,900", "--dump-dom")
    wall = time.perf_counter() - t0
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, "no <body> in the dumped DOM"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    # the page's own check ran after load: every chart has an <svg> with a size and marks in it
    assert attrs.get("drawn") == str(len(charts)) == attrs.get("charts"), attrs
    drawn = re.findall(r'<figure class="chart" data-chart="([a-z_]+)" data-drawn="(yes|no)"', dom.stdout)
    assert [c for c, _ in drawn] == charts and all(ok == "yes" for _, ok in drawn), drawn
    assert attrs.get("errors") == "", attrs.get("errors")
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # script errors, CSP refusals (a network fetch), console output
    # a full-page screenshot, for a person to look at
    shot = folder / f"{name}.png"
    height = min(int(attrs["height"]), 16000)
    proc = browse(page, folder / "profile", f"--window-size=1280,{height}", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, height)
        colours = im.convert("RGB").resize((320, max(1, height // 4))).getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50  # drawn, not a blank page
    print(f"{name}: {len(html) / 1024:.0f} KB, rendered in {attrs['render-ms']} ms "
          f"(browser start to DOM dump {wall:.1f} s); screenshot {shot}")
    return attrs


def test_demo_like_report_renders_in_chromium(tmp_path: Path):
    chromium()
    paths = build_inputs(tmp_path)
    loaded = load_inputs([str(paths[k]) for k in ("pool", "picks", "selection", "base", "now")])
    html = report_table(loaded, ReportOptions(note="A tiny synthetic run."))
    attrs = check_in_browser(html, tmp_path, "demo", ["heatmap", "map", "refusal_by_category",
                                                      "refusal_vs_over_refusal", "compare"])
    assert int(attrs["render-ms"]) < 20_000


def test_committed_cpu_experiment_report_renders_in_chromium(tmp_path: Path):
    chromium()
    results = REPO / "results" / "cpu"
    paths = [str(results / "summary.json")] + sorted(str(p) for p in (results / "selection").glob("*.json"))
    html = report_table(load_inputs(paths), ReportOptions(title="CPU experiment"))
    check_in_browser(html, tmp_path, "experiment", ["coverage", "per_category_picks", "experiment"])


def test_a_script_error_is_caught(tmp_path: Path):
    """The check itself works: a page with a failing script does not pass."""
    chromium()
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    proc = browse(page, tmp_path / "profile", "--dump-dom")
    assert any("CONSOLE" in line and "undefinedFunction" in line for line in proc.stderr.splitlines())
