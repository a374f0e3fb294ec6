"""The HTML pages in a real browser: headless Chromium (Debian's ``chromium`` package, driven by
Playwright without downloading a browser). What a reader would check: the page loads with no
console error and no network request, the verdict table shows the run's numbers and sorts, the
charts are drawn, a record on the selection map can be read, and the dataset card's sample opens.

Its own CI step (``pytest -m browser``): a tiny ablation with dedupe, filter and select steps is
run once for the module (about 2.5 minutes). Screenshots go to tests/artifacts/ (or
``$DATAKIT_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import fixture_path

import datakit

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DATAKIT_ARTIFACTS") or ROOT / "tests" / "artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Visit:
    """A page opened from a file, with every console error and every request it made."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def check_clean(self, path: Path) -> None:
        assert self.errors == [], self.errors
        assert self.requests == [path.as_uri()], f"the page fetched more than itself: {self.requests}"

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name), full_page=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny ablation whose curated arm dedupes, filters and selects, so every card part exists."""
    folder = tmp_path_factory.mktemp("report")
    records = list(datakit.read_records(ROOT / "datakit" / "data" / "alpaca_sample.json"))[:60]
    datakit.write_records(records + records[:6], folder / "sample.jsonl", to="sharegpt")  # 6 exact copies
    steps = [{"dedupe": {"method": "minhash"}}, {"filter": {"min_response_chars": 40}}, {"select": {"k": 20}}]
    recipe = {
        "name": "report", "model": "smollm2-135m", "template": "chatml", "seeds": [0],
        "train": {"max_steps": 3, "batch_size": 2, "max_length": 96, "lr": 1.0e-3, "dtype": "fp32"},
        "eval": {"tasks": ["heldout_loss"], "limit": 6, "batch_size": 8, "answers": 2},
        "arms": {"base": {"train": False}, "all": {"data": [{"path": "sample.jsonl"}]},
                 "curated": {"data": [{"path": "sample.jsonl"}], "steps": steps}},
        "baseline": "all",
    }  # fmt: skip
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "evals.cli", "run", str(folder / "recipe.yaml"), "--out",
                             str(folder / "run")], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def test_the_run_report_reads_as_a_person_would_read_it(browser, run_dir: Path) -> None:
    path = run_dir / "report.html"
    visit = Visit(browser, path)
    page = visit.page
    visit.check_clean(path)
    results = json.loads((run_dir / "results.json").read_text())

    # the verdict table shows the run's numbers, and a click on a heading sorts by it
    table = page.locator("#verdict table").first
    rows = table.locator("tbody tr")
    assert rows.count() == 3
    shown = {rows.nth(i).locator("td").nth(0).inner_text().split()[0]: rows.nth(i).locator("td").nth(2).inner_text()
             for i in range(rows.count())}  # fmt: skip
    assert shown == {
        arm: f"{by_task['heldout_loss']['estimate']['mean']:.3f}" for arm, by_task in results["arms"].items()
    }
    table.get_by_role("button", name="mean").click()
    means = [float(rows.nth(i).locator("td").nth(2).inner_text()) for i in range(rows.count())]
    assert means == sorted(means)
    assert page.locator("#verdict").get_by_text("not tested").count() >= 1  # one seed: no verdict

    # the charts are drawn: dots with a size on screen, one loss line per trained run
    marks = page.locator("svg circle.mark")
    assert marks.count() >= 3 + 2  # every run's score, and the two trained arms' differences
    assert all(marks.nth(i).bounding_box()["width"] > 0 for i in range(marks.count()))
    assert page.locator("svg polyline.series").count() == len(list((run_dir / "loss").glob("*.jsonl"))) == 2

    # the data card: what dedupe merged and what the filter rejected, with their reasons
    card = json.loads((run_dir / "cards" / "curated.json").read_text())
    dedupe, filter_, select = card["steps"]
    assert dedupe["report"]["removed"] and dedupe["merged"]
    assert page.get_by_text(f"kept {dedupe['merged'][0]['kept']['id']}").first.is_visible()
    reason = filter_["rejected"][0]["reason"]
    assert page.locator("#data table").get_by_text(reason, exact=True).first.is_visible()

    # the selection map: pointing at a chosen record shows that record in the panel
    chosen = page.locator("circle.chosen")
    assert chosen.count() == 20 == sum(p[2] for p in select["map"]["points"])
    dot = chosen.nth(3)
    dot.scroll_into_view_if_needed()
    dot.hover()
    index = int(dot.get_attribute("data-i"))
    panel = page.locator(".panel").first
    expected = select["map"]["texts"][index]
    assert panel.locator("p").inner_text() == expected["label"]
    assert panel.locator("pre").inner_text().strip() == expected["text"].strip()

    # the answers, side by side with the reference
    answers = json.loads((run_dir / "answers.json").read_text())
    assert len(answers) == 2
    section = page.locator("#answers")
    for arm, text in answers[0]["answers"].items():
        assert section.get_by_text(arm, exact=True).first.is_visible()
        assert text.strip()[:40] in section.inner_text()

    # every link to a per-item file points at a file that exists
    for href in page.eval_on_selector_all("a[href^='items/']", "els => els.map(e => e.getAttribute('href'))"):
        assert (run_dir / href).exists(), href
    visit.screenshot("report.png")


def test_the_dataset_card_opens_and_its_sample_can_be_read(browser, tmp_path: Path) -> None:
    source = fixture_path("llama-factory/glaive_toolcall_en_demo.json")
    path = tmp_path / "card.html"
    result = subprocess.run([sys.executable, "-m", "datakit.cli", "inspect", str(source), "--html", str(path)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    visit = Visit(browser, path)
    page = visit.page
    visit.check_clean(path)
    assert page.locator("svg rect.bar").count() > 10  # the histograms and bar charts are drawn
    sample = page.locator("#sample tbody tr")
    assert sample.count() == 101
    first = sample.first
    first.locator("summary").click()
    record = json.loads(source.read_text())[0]
    assert record["conversations"][0]["value"][:30] in first.locator("pre").inner_text()
    visit.screenshot("dataset-card.png")
