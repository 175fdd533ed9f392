"""The HTML reports in a real browser: headless Chromium driven by Selenium.

Checks what a reader sees: no console error, no network request (the page is
self-contained), the method table lists every method, the gene picker redraws the
maps, and the screenshot is not blank. Skipped, with the reason, only where Chromium
and its driver are not installed (``.ci/run`` installs them with apt).

``GR2ST_REPORT_HTML=path`` checks that benchmark report instead of the synthetic one
(e.g. one of real data) and ``GR2ST_REPORT_SCREENSHOT=path.png`` keeps the screenshot
(the README's picture is taken this way).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predict"))

from predictfixtures import Trained

from gr2st._constants import IMAGE_PATH, UNS
from gr2st.benchmark import run_benchmark
from gr2st.datasets import synthetic
from gr2st.report import prediction_page, write_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
METHODS = ["knn", "mean", "oracle"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"no headless browser ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver (.ci/run does)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(300)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def benchmark_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if given := os.environ.get("GR2ST_REPORT_HTML"):
        return Path(given).resolve()
    folder = tmp_path_factory.mktemp("report")
    sections = synthetic(n_sections=3, n_genes=8, grid=(5, 5), image_dir=folder, seed=2)
    for section in sections:
        section.obsm["X_toy"] = section.obs[["latent_state"]].to_numpy(float)
    run_benchmark(
        sections,
        methods=METHODS,
        genes=list(sections[0].var_names),
        feature_key="X_toy",
        out_dir=folder / "out",
        progress=False,
        figures=False,
    )
    return folder / "out" / "report.html"


def _open(driver: Any, page: Path) -> None:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get_log("performance")
    driver.get(page.as_uri())
    driver.execute_script("return document.readyState")


def _check_offline_and_clean(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    requested = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    outside = [u for u in requested if not u.startswith(("file://", "data:"))]
    assert requested, "the performance log recorded no request at all (not even the page)"
    assert outside == []


def _pick(driver: Any, section: int, gene: str) -> None:
    from selenium.webdriver.common.by import By

    picker = driver.find_elements(By.CSS_SELECTOR, "input.gene-picker")[section]
    picker.clear()
    picker.send_keys(gene)


def _colours(driver: Any, panel: str) -> list[Any]:
    return list(
        driver.execute_script(
            "return document.getElementById(arguments[0]).data[0].marker.color;", panel
        )
    )


def _not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


def _screenshot(driver: Any, path: Path) -> bytes:
    """The page down to the end of the first maps, at most 2,600 px tall."""
    height = driver.execute_script(
        "const s = document.querySelector('section.maps');"
        "return s ? s.getBoundingClientRect().bottom + window.scrollY + 20"
        " : document.body.scrollHeight;"
    )
    driver.set_window_size(1300, int(min(max(height, 800), 2600)))
    png = driver.get_screenshot_as_png()
    driver.set_window_size(1300, 1600)
    path.write_bytes(png)
    if keep := os.environ.get("GR2ST_REPORT_SCREENSHOT"):
        # A small palette PNG for the README.
        image = Image.open(io.BytesIO(png)).convert("RGB")
        image = image.resize(
            (image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS
        )
        image.quantize(colors=128).save(keep, optimize=True)
    return png


def test_benchmark_report_in_chromium(browser: Any, benchmark_report: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    results = json.loads((benchmark_report.parent / "results.json").read_text())
    _open(browser, benchmark_report)
    listed = [
        row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "#methods tbody tr")
    ]
    assert sorted(listed) == sorted(results["methods"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "section.maps")) == len(results["sections"])
    # Every figure was drawn (Plotly adds its class to the divs it renders into).
    plots = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    assert len(plots) >= 2 + len(results["sections"])

    panel = browser.find_element(By.CSS_SELECTOR, "section.maps .panel")
    genes = [
        o.get_attribute("value")
        for o in browser.find_elements(By.CSS_SELECTOR, "section.maps datalist option")
    ]
    before_colours = _colours(browser, panel.get_attribute("id"))
    before_png = panel.screenshot_as_png
    target = next(g for g in genes[1:] if g != panel.get_attribute("data-gene"))
    _pick(browser, 0, target)
    assert panel.get_attribute("data-gene") == target
    after_colours = _colours(browser, panel.get_attribute("id"))
    assert after_colours != before_colours
    assert panel.screenshot_as_png != before_png
    assert target in panel.text  # the panel's title names the gene
    # An unknown name is flagged and leaves the maps as they are.
    _pick(browser, 0, "NOT_A_GENE")
    picker = browser.find_elements(By.CSS_SELECTOR, "input.gene-picker")[0]
    assert "unknown" in picker.get_attribute("class")
    assert panel.get_attribute("data-gene") == target
    _pick(browser, 0, genes[0])
    _not_blank(_screenshot(browser, tmp_path / "report.png"))
    _check_offline_and_clean(browser)


def test_prediction_report_in_chromium(browser: Any, trained: Trained, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from gr2st.predict import load_bundle, predict_spots, spots_from_section

    bundle = load_bundle(trained.path, device="cpu")
    pred = predict_spots(
        bundle,
        trained.test.uns[UNS][IMAGE_PATH],
        spots_from_section(trained.test, source="h5ad"),
        progress=False,
    )
    page = write_page(
        prediction_page(pred, command="gr2st predict", versions="test"), tmp_path / "p.html"
    )
    _open(browser, page)
    panels = browser.find_elements(By.CSS_SELECTOR, "section.maps .panel")
    # predicted, uncertainty, measured, and the tissue map.
    assert len(panels) == 4
    titles = [p.text for p in panels]
    assert any("tissue" in t for t in titles)
    gene = str(pred.var_names[2])
    before = [_colours(browser, p.get_attribute("id")) for p in panels[:3]]
    _pick(browser, 0, gene)
    after = [_colours(browser, p.get_attribute("id")) for p in panels[:3]]
    assert all(a != b for a, b in zip(after, before, strict=True))
    column = pred.var_names.get_loc(gene)
    # The page's values are the prediction's, to the quantisation's resolution.
    values = np.asarray(after[0], dtype=float)
    truth = np.asarray(pred.X[:, column], dtype=float)
    step = (truth.max() - truth.min()) / 254
    np.testing.assert_allclose(values, truth, atol=step / 2 + 1e-6)
    _not_blank(browser.get_screenshot_as_png())
    _check_offline_and_clean(browser)


def test_the_report_is_one_file(benchmark_report: Path) -> None:
    """Outside its scripts the page links to nothing: no stylesheet, script or image file."""
    html = re.sub(r"<script[^>]*>.*?</script>", "", benchmark_report.read_text(), flags=re.S)
    assert "<link" not in html
    assert re.findall(r"""(?:src|href)=["'](?!data:)""", html) == []
    assert html.count('src="data:') == 0  # thumbnails travel inside the figures' JSON
