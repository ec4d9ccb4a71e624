"""The HTML report, opened in a real headless Chromium: it renders, every image loads, it shows the right groups.

Chromium comes from Debian's package (`apt-get install chromium`, done by .ci/run); Playwright drives it
without downloading a browser of its own. A screenshot is saved to test-artifacts/report.png.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    run_cli("demo", folder / "demo-data", cwd=folder)
    run_cli("run", folder / "demo-data" / "shards", "--config", "demo", "--run-dir", folder / "run", cwd=folder)
    run_cli("report", folder / "run", cwd=folder)
    return folder


@pytest.mark.slow
def test_report_in_headless_chromium(demo_run):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install chromium (the browser test needs a real browser)")
    report = demo_run / "run" / "report.html"
    groups = pq.read_table(demo_run / "run" / "groups.parquet").to_pylist()
    expected = sorted({(-g["group_size"], g["group_id"]) for g in groups if g["group_size"] > 1})[:20]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        failed_requests = []
        page.on("requestfailed", lambda request: failed_requests.append(request.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("[...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt}))")
        shown = page.evaluate(
            "[...document.querySelectorAll('section.group')].map(s => [Number(s.dataset.groupId), Number(s.dataset.groupSize)])"
        )
        reconcile = page.inner_text("#reconcile")
        relation_rows = page.evaluate(
            "[...document.querySelectorAll('#relations tr')].map(r => [r.dataset.relation, r.cells[1].innerText])"
        )
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        browser.close()
    assert images and all(image["ok"] for image in images), [i for i in images if not i["ok"]]
    assert failed_requests == []
    assert [(size, group) for group, size in shown] == [(-s, g) for s, g in expected]
    assert "(reconciles)" in reconcile
    relations = pq.read_table(demo_run / "run" / "pairs.parquet")["relation"].to_pylist()
    assert {name: int(count.replace(",", "")) for name, count in relation_rows} == {
        name: relations.count(name) for name in set(relations)
    }
    planted = json.loads((demo_run / "demo-data" / "shards" / "planted.json").read_text())
    assert len(shown) >= len(planted["groups"]) - 2


def test_report_stays_bounded(demo_run):
    run_cli("report", demo_run / "run", "--max-groups", "3", "--pairs-per-band", "1", "--out", demo_run / "small.html")
    html = (demo_run / "small.html").read_text()
    assert html.count("class='group'") == 3
    assert html.count("class='pair'") <= 6


def test_a_config_file_holds_the_tables_of_report_and_extract_too(demo_run):
    """One config file for a pipeline step: its [report] and [extract] tables are read by those commands (the
    run's loader passes over them), and --set reaches them as it reaches the run's."""
    from dedup.settings import load_settings, load_tool_settings

    config = demo_run / "step.toml"
    config.write_text("[find]\nthreshold = 0.97\n[report]\nmax_groups = 2\n[extract]\nprompts = 7\n")
    assert load_settings(str(config)).find.threshold == 0.97
    assert load_tool_settings("extract", str(config), [], {}).prompts == 7
    assert load_tool_settings("report", str(config), ["report.max_groups=1"], {}).max_groups == 1
    run_cli("report", demo_run / "run", "--config", config, "--out", demo_run / "two.html")
    assert (demo_run / "two.html").read_text().count("class='group'") == 2


def test_calibrate_on_the_demo_run_with_its_ground_truth(demo_run):
    """The demo's 29 planted copies as labels: calibrate writes its table and plot and suggests a threshold
    at which the labelled pairs it measures are told apart."""
    result = run_cli("calibrate", demo_run / "run", "--labels", demo_run / "demo-data" / "shards" / "planted.json")
    assert "suggested threshold" in result.stdout
    table = json.loads((demo_run / "run" / "calibration.json").read_text())
    assert table["suggested_threshold"] in [row["threshold"] for row in table["thresholds"]]
    assert (demo_run / "run" / "calibration.png").exists()


@pytest.mark.slow
def test_calibrate_suggests_a_threshold_that_separates_planted_pairs(planted_flickr, tmp_path):
    shards_dir, planted = planted_flickr
    run_cli("embed", shards_dir, "--run-dir", tmp_path, "--config", "offline")
    result = run_cli("calibrate", tmp_path, "--labels", shards_dir / "planted.json")
    assert "suggested threshold" in result.stdout
    table = json.loads((tmp_path / "calibration.json").read_text())
    best = next(row for row in table["thresholds"] if row["threshold"] == table["suggested_threshold"])
    assert best["precision"] >= 0.99
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
    unlabelled = run_cli("calibrate", tmp_path, "--sample", "1500")
    assert "suggested threshold" in unlabelled.stdout
