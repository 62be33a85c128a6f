"""The HTML report in a real headless Chromium: a screenshot of the requested size that is
not blank, and a rendered DOM holding the tables' cells and the embedded images.

Skipped when no browser is installed (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from byzbench.cli import main
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments import ResultsStore
from byzbench.report import CurvesSpec, HeatmapSpec, ReportSpec, build_report
from byzbench.report.browser import (
    ENV_VAR,
    BrowserNotFoundError,
    check_dom,
    find_browser,
    render_check,
    screenshot,
)


def _missing_browser() -> str | None:
    """Why no browser can be used (find_browser's message), or None when one is found."""
    try:
        find_browser()
    except BrowserNotFoundError as exc:
        return str(exc)
    return None


needs_browser = pytest.mark.skipif(_missing_browser() is not None, reason=f"{_missing_browser()}")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """A report of a tiny hand-made store: 2 attacks × 2 defenses × 2 seeds, two figures."""
    tmp = tmp_path_factory.mktemp("browser")
    base = ExperimentConfig(rounds=3, eval_every=3, n_clients=8, n_byzantine=2, model="logistic")
    with ResultsStore(tmp / "s.db") as store:
        for a, attack in enumerate(("alie(z=8)", "ipm(epsilon=0.5)")):
            for d, defense in enumerate(("mean", "trmean")):
                for seed in (0, 1):
                    cfg = base.override([f"attack={attack}", f"defense={defense}", f"seed={seed}"])
                    accs = [0.1, 0.3 + 0.2 * a + 0.1 * d, 0.4 + 0.2 * a + 0.1 * d + 0.05 * seed]
                    store.start_run(cfg.run_id, cfg.to_dict(), "test")
                    store.finish_run(cfg.run_id, status="finished", rounds_completed=50,
                                     metrics={"test_accuracy": [(0, accs[0]), (25, accs[1]), (50, accs[2])]},
                                     final_accuracy=accs[-1], final_loss=1.0, diverged_round=None,
                                     wall_time_s=1.0)
    spec = ReportSpec(curves=(CurvesSpec("defense", "attack"),), heatmaps=(HeatmapSpec("attack", "defense"),))
    built = build_report(tmp / "s.db", spec, tmp / "out")
    return {"tmp": tmp, "html": built.paths["html"], "table": built.tables[0]}


def test_find_browser_explains_how_to_install_one(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(BrowserNotFoundError, match="apt-get install -y chromium"):
        find_browser()
    monkeypatch.setenv(ENV_VAR, "no-such-browser")
    with pytest.raises(ConfigError, match=f"{ENV_VAR}: browser 'no-such-browser' not found"):
        find_browser()


def test_check_dom_counts_tables_cells_images_and_external_references():
    dom = ('<html><body><table><tr><td> 1.00 ± 2.00 </td><td>x</td></tr></table>'
           '<img src="data:image/png;base64,AAAA"><img src="http://example.org/a.png"></body></html>')
    check = check_dom(dom)
    assert (check.tables, check.cells, check.images, check.data_images) == (1, 2, 2, 1)
    assert check.cell_texts == ("1.00 ± 2.00", "x") and check.external == ("http://example.org/a.png",)
    assert not check.ok


@needs_browser
def test_screenshot_has_the_requested_size_and_is_not_blank(report):
    png = screenshot(report["html"], report["tmp"] / "shot.png", 1024, 1400)
    with Image.open(png) as im:
        assert im.size == (1024, 1400)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # text, table rules and figures, not a blank page
    top = pixels[:700]
    assert (top < 128).mean() > 0.002  # dark ink (headings and table text) in the upper half


@needs_browser
def test_rendered_dom_shows_the_table_cells_and_images(report):
    check = render_check(report["html"])
    assert check.ok and check.tables == 1 and check.images == 2 == check.data_images
    table = report["table"]
    for _, cells in table.grid():
        for cell in cells:
            assert table.text(cell) in check.cell_texts
    assert len(check.cell_texts) == sum(len(cells) for _, cells in table.grid())


@needs_browser
def test_cli_screenshot_option(report, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["report", str(report["tmp"] / "s.db"), "--out", str(out), "--curves", "defense",
                 "--screenshot"]) == 0
    err = capsys.readouterr().err
    assert (out / "report.png").is_file() and "1 table(s)" in err and "1 image(s) (1 embedded)" in err


def test_screenshot_rejects_bad_sizes(report):
    if shutil.which("true") is None:
        pytest.skip("no `true` executable to stand in for a browser")
    with pytest.raises(ConfigError, match="width"):
        screenshot(report["html"], report["tmp"] / "x.png", 0, 100, browser="true")
    with pytest.raises(RuntimeError, match="no screenshot"):
        screenshot(report["html"], report["tmp"] / "x.png", 100, 100, browser="true")
