"""The dashboard in a real headless browser (Chromium through Selenium and the system chromedriver).

Skips when selenium, chromium or chromedriver is not installed; `.ci/run` installs the browser with
apt. QBERT_CHROMIUM / QBERT_CHROMEDRIVER override where the binaries are looked for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from qbert.report.dashboard import Section, Table, write_dashboard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_binary(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.access(os.environ[env], os.X_OK) else None
    return next((path for path in map(shutil.which, names) if path), None)


def sort_table() -> Table:
    # The acceptance case: 10, 9, 100, None, -1 sorts to -1, 9, 10, 100 with the empty cell last.
    return Table("sorting", ["name", "value", "delta", "tag"],
                 [["a", 10, "+1.23", "<script>alert(1)</script>"], ["b", 9, "-0.50", "x"],
                  ["c", 100, "+10.0", "y"], ["d", None, None, "z"], ["e", -1, "-12", "w"]],
                 digits=1, row_classes=["", "failed", "paper", "", ""])


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> tuple[Path, list[Path]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder = tmp_path_factory.mktemp("dashboard")
    pngs = []
    for name, ys in (("acc_vs_bits.png", [91.2, 90.1, 85.0]), ("size.png", [418, 52, 26])):
        fig, ax = plt.subplots(figsize=(3, 2), dpi=60)
        ax.plot([32, 4, 2], ys, marker="o")
        fig.savefig(folder / name)
        plt.close(fig)
        pngs.append(folder / name)
    sections = [Section("Sorting", notes=["click a header"], tables=[sort_table()], images=pngs[:1]),
                Section("Results", tables=[Table("runs", ["method", "acc"],
                                                 [["fp32", 91.234], ["w4", 90.0], ["w2", 84.5]])],
                        images=pngs[1:])]
    return write_dashboard(folder / "dashboard.html", "qbert dashboard", sections, "test"), pngs


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        pytest.skip(f"selenium not installed: {err} (pip install 'qbert[dev]')")
    chromium = find_binary("QBERT_CHROMIUM", BROWSERS)
    if chromium is None:
        pytest.skip(f"chromium not installed: none of {', '.join(BROWSERS)} on PATH, or QBERT_CHROMIUM "
                    "not executable (apt-get install chromium chromium-driver)")
    chromedriver = find_binary("QBERT_CHROMEDRIVER", ("chromedriver",))
    if chromedriver is None:
        pytest.skip("chromedriver not installed: not on PATH, or QBERT_CHROMEDRIVER not executable "
                    "(apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--no-first-run", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser, dashboard):
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(dashboard[0].resolve().as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")
    return browser


def column(driver, table_id: str, col: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".map(tr => tr.querySelector('td[data-col=\"' + arguments[1] + '\"]').textContent);",
        table_id, col)


def header(driver, table_id: str, col: int):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f'#{table_id} th[data-col="{col}"]')


def test_script_ran_and_no_errors(page):
    assert page.execute_script("return document.documentElement.getAttribute('data-qbert-ready')") == "1"
    errors = [e for e in page.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    # Nothing was fetched except the data: images.
    names = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("data:") for name in names), names


def test_tables_render(page):
    from selenium.webdriver.common.by import By
    tables = page.find_elements(By.CSS_SELECTOR, "table.qbert-table")
    assert [t.get_attribute("id") for t in tables] == ["sorting-table-0", "results-table-0"]
    assert len(tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")) == 5
    assert column(page, "sorting-table-0", 1) == ["10", "9", "100", "", "-1"]
    assert column(page, "results-table-0", 1) == ["91.23", "90.00", "84.50"]
    # An HTML-looking cell is text, not markup: no script element was created from it.
    assert column(page, "sorting-table-0", 3)[0] == "<script>alert(1)</script>"
    assert page.execute_script("return document.scripts.length") == 1
    toc = [a.get_attribute("href").rsplit("#", 1)[1] for a in page.find_elements(By.CSS_SELECTOR, ".qbert-toc a")]
    assert toc == ["sorting", "results"] and all(page.find_elements(By.ID, sid) for sid in toc)
    failed = page.find_element(By.CSS_SELECTOR, "#sorting-table-0 tr.failed td")
    assert failed.value_of_css_property("color") == "rgba(180, 35, 24, 1)"


def test_images_decode(page, dashboard):
    from selenium.webdriver.common.by import By
    images = page.find_elements(By.CSS_SELECTOR, "img")
    assert len(images) == len(dashboard[1]) == 2
    for img in images:
        assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 180
        assert img.get_attribute("src").startswith("data:image/png;base64,")


def test_header_click_sorts_numerically_both_ways(page):
    table = "sorting-table-0"
    th = header(page, table, 1)
    th.click()
    assert column(page, table, 1) == ["-1", "9", "10", "100", ""]
    assert th.get_attribute("aria-sort") == "ascending" and th.text.endswith("▲")
    th.click()
    assert column(page, table, 1) == ["100", "10", "9", "-1", ""]
    assert th.get_attribute("aria-sort") == "descending" and th.text.endswith("▼")
    # "+1.23"-style deltas are numbers; the other header loses its mark; the empty cell stays last.
    delta = header(page, table, 2)
    delta.click()
    assert column(page, table, 2) == ["-12", "-0.50", "+1.23", "+10.0", ""]
    assert th.get_attribute("aria-sort") is None and th.text == "value"
    delta.click()
    assert column(page, table, 2) == ["+10.0", "+1.23", "-0.50", "-12", ""]
    # Text sorts as text; row classes travel with their rows.
    header(page, table, 0).click()
    assert column(page, table, 0) == ["a", "b", "c", "d", "e"]
    assert page.execute_script(f"return document.querySelector('#{table} tr.failed td').textContent") == "b"


def test_filter_hides_rows(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    box = page.find_element(By.CSS_SELECTOR, 'input.qbert-filter[data-table="results-table-0"]')
    box.send_keys("w")
    visible = page.execute_script(
        "return Array.from(document.querySelectorAll('#results-table-0 tbody tr'))"
        ".filter(tr => !tr.hidden).map(tr => tr.cells[0].textContent)")
    assert visible == ["w4", "w2"]
    count = page.find_element(By.CSS_SELECTOR, '.qbert-count[data-table="results-table-0"]')
    assert count.text == "2 / 3 rows"
    box.send_keys(Keys.BACKSPACE)  # an empty query shows every row again
    assert page.execute_script(
        "return document.querySelectorAll('#results-table-0 tbody tr:not([hidden])').length") == 3
    assert count.text == "3 rows"
