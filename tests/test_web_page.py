"""The station page in a real headless Chromium (Debian's, driven by Playwright): type the seed instruction with
term completion, upload cells, see boxes and both answers per image with similar past cases, save a confirmed
finding as a case with one click, find it by search; the page in the browser's language. Set
DEFECT_AGENT_SCREENSHOT=path to keep a screenshot of the page (the README's is made that way)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from server_support import battery_cells, running_server, scratch_home

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps installs it)"),
]
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SEED_ZH = "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯"


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    from knowledge_base.sample import ensure_sample_kb

    base = tmp_path_factory.mktemp("page")
    home = scratch_home(base)
    ensure_sample_kb(home / "var" / "kb")  # past cases to show beside each finding
    cells = battery_cells(base / "cells", n=3, seed=2026)
    with running_server(home) as url:
        yield {"url": url, "cells": cells}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def open_page(browser, url: str, locale: str):
    context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def test_inspect_save_a_case_and_find_it(browser, station):
    page = open_page(browser, station["url"], "zh-CN")
    assert page.locator("#run").inner_text() == "检测"  # the page follows the browser's language
    page.fill("#instruction", "找出所有极耳焊接偏移超0.3mm且伴随焊渣")
    page.type("#instruction", "飞")
    assert "焊渣飞溅" in page.locator("#suggestions li").all_inner_texts()  # completion of the line's terms
    page.fill("#instruction", SEED_ZH)
    page.set_input_files("#files", [str(p) for p in station["cells"]])
    page.click("#run")
    page.wait_for_selector(".card", timeout=180_000)
    cards = page.locator(".card")
    assert cards.count() == 3
    verdicts = {cards.nth(i).locator(".verdict").inner_text() for i in range(3)}
    assert verdicts <= {"不合格", "复核", "合格"}
    page.wait_for_function("document.querySelectorAll('svg.boxes rect').length > 0", timeout=30_000)
    misaligned = page.evaluate(
        """() => [...document.querySelectorAll('.card .figure')].filter((f) => {
            const a = f.querySelector('img').getBoundingClientRect(), b = f.querySelector('svg').getBoundingClientRect();
            return Math.abs(a.top - b.top) > 1 || Math.abs(a.height - b.height) > 1 || Math.abs(a.width - b.width) > 1;
        }).length"""
    )
    assert misaligned == 0, "the boxes are drawn over exactly the image"
    assert page.locator(".card .match").first.inner_text().startswith(("符合指令", "不符合指令"))
    assert page.locator(".similar img").count() > 0, "similar past cases are shown with thumbnails"
    rows = " ".join(page.locator(".defect-row").all_inner_texts())
    assert " mm" in rows and "漏焊" in rows or "焊渣飞溅" in rows  # measurements and the line's own words
    if os.environ.get("DEFECT_AGENT_SCREENSHOT"):
        page.screenshot(path=os.environ["DEFECT_AGENT_SCREENSHOT"], full_page=True)
    page.locator("button.save").first.click()
    page.wait_for_selector(".saved", timeout=60_000)
    saved = page.locator(".saved").first.inner_text()
    case_id = saved.split("#")[-1]
    assert case_id.isdigit()
    page.fill("#search", "confirmed at the station")
    page.click("#search-form button")
    page.wait_for_selector(f".hit[data-case-id='{case_id}']", timeout=30_000)
    page.context.close()


def test_the_page_speaks_english_to_an_english_browser(browser, station):
    page = open_page(browser, station["url"], "en-US")
    assert page.locator("#run").inner_text() == "Inspect"
    assert "find cells" in page.get_attribute("#instruction", "placeholder")
    page.fill("#instruction", "find cells with blorps")
    page.set_input_files("#files", [str(station["cells"][0])])
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent.includes('blorps')", timeout=60_000)
    assert page.locator(".card").count() == 0
    page.context.close()


def test_screenshot_path_is_documented():
    assert "docs/station.png" in (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
