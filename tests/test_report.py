"""The HTML pages without a browser: self-contained (nothing fetched), hostile text kept inert,
and the dataset card of ``datakit inspect --html``. tests/test_browser.py opens them in Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from conftest import fixture_path

from datakit.html import Page, nice_ticks, record_map

GLAIVE = fixture_path("llama-factory/glaive_toolcall_en_demo.json")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data") and v]


def assert_self_contained(page: str) -> None:
    """Nothing in the page is fetched from elsewhere: no absolute URL in any src or href (links
    to the run's own files are relative), no external script or stylesheet, and a content
    security policy that refuses any fetch a future change might add."""
    parser = _Links()
    parser.feed(page)
    remote = [u for u in parser.urls if "://" in u or u.startswith("//")]
    assert not remote, f"the page refers to remote resources: {remote[:5]}"
    assert not [t for t, a in parser.tags if (t == "script" and "src" in a) or (t == "link" and a.get("rel"))]
    assert "default-src 'none'" in page


def test_inspect_html_writes_a_self_contained_dataset_card(tmp_path: Path) -> None:
    card = tmp_path / "card.html"
    result = subprocess.run([sys.executable, "-m", "datakit.cli", "inspect", str(GLAIVE), "--html", str(card), "--json"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert "values" not in report and "sample" not in report  # the page's extras stay out of --json
    page = card.read_text()
    assert_self_contained(page)
    rows = json.loads(GLAIVE.read_text())
    assert report["records"] == len(rows) == 101
    assert "<td>records</td><td>101</td>" in page.replace(' class="num"', "")
    assert page.count("<details>") == 101  # every record of a small file is in the browsable sample
    assert "<svg" in page and 'class="bar"' in page  # the distributions are drawn
    assert ">en<" in page  # the languages of the sample


def test_inspect_html_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_bytes(GLAIVE.read_bytes())
    result = subprocess.run([sys.executable, "-m", "datakit.cli", "inspect", str(data), "--html", str(data)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and "would overwrite the input" in result.stderr
    assert "Traceback" not in result.stderr and data.read_bytes() == GLAIVE.read_bytes()


def test_hostile_record_text_stays_text_on_the_page(tmp_path: Path) -> None:
    """A record that holds markup or a closing script tag cannot end the page's data block or run."""
    hostile = '</script><script>document.title="owned"</script><img src=x onerror=alert(1)>'
    page = Page("t")
    page.section("Map", "map")
    page.add(record_map([(0.0, 0.0, True), (1.0, 1.0, False)], [{"label": hostile, "text": hostile}] * 2, "m", hostile))
    html = page.render()
    assert html.count("<script") == 2  # the records' data block and the page's own script, nothing more
    assert "<img" not in html and "\\u003c/script\\u003e\\u003cscript\\u003edocument.title" in html


def test_axis_ticks_cover_the_values_with_round_steps() -> None:
    for low, high in [(0.0, 1.0), (-0.031, 0.012), (1.2, 1.9), (3.0, 3.0), (0.0, 6293.0)]:
        ticks = nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1
