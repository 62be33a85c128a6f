"""Open a report in a headless Chromium: a screenshot, and a check of the rendered DOM.

The browser is ``$BYZBENCH_BROWSER`` if set, else the first of `CANDIDATES` on the PATH
(Debian's package is ``chromium``: ``apt-get install -y chromium``). Every call uses a
fresh temporary profile, so parallel calls do not share a lock, and the flags
``--headless --disable-gpu --no-sandbox`` (the last one lets it run as root in a
container).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from byzbench.errors import ConfigError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
ENV_VAR = "BYZBENCH_BROWSER"
FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--mute-audio")
DEFAULT_SIZE = (1280, 1600)
TIMEOUT_S = 120.0


class BrowserNotFoundError(ConfigError):
    """No headless browser could be found (or the one named does not exist)."""


def find_browser(name: str | None = None) -> str:
    """The browser executable: ``name``, else ``$BYZBENCH_BROWSER``, else the first of
    `CANDIDATES` on the PATH; `BrowserNotFoundError` saying how to install one."""
    wanted = name or os.environ.get(ENV_VAR)
    if wanted:
        found = shutil.which(wanted)
        if found is None:
            raise BrowserNotFoundError(f"browser {wanted!r} not found", "browser" if name else ENV_VAR)
        return found
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrowserNotFoundError(
        f"no headless browser found (looked for {', '.join(CANDIDATES)} on the PATH); install one, "
        f"e.g. `apt-get install -y chromium` on Debian, or set ${ENV_VAR}", "browser")


def _run(args: list[str], browser: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the browser with `FLAGS`, a throw-away profile and ``args``."""
    exe = find_browser(browser)
    with tempfile.TemporaryDirectory(prefix="byzbench-browser-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{exe} did not finish within {timeout:g} s") from exc


def _url(html_path: str | Path) -> str:
    path = Path(html_path).resolve()
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", "html_path")
    return path.as_uri()


def screenshot(html_path: str | Path, png_path: str | Path, width: int = DEFAULT_SIZE[0],
               height: int = DEFAULT_SIZE[1], *, browser: str | None = None,
               timeout: float = TIMEOUT_S) -> Path:
    """Render ``html_path`` in a ``width`` × ``height`` window and save a PNG of it."""
    for key, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 16384:
            raise ConfigError(f"must be an integer in [16, 16384], got {value!r}", key)
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    done = _run([f"--screenshot={png}", f"--window-size={width},{height}", _url(html_path)], browser, timeout)
    if not png.is_file():
        raise RuntimeError(f"the browser wrote no screenshot (exit status {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return png


def dump_dom(html_path: str | Path, *, browser: str | None = None, timeout: float = TIMEOUT_S) -> str:
    """The DOM of the page after the browser has parsed and rendered it (``--dump-dom``)."""
    done = _run(["--dump-dom", _url(html_path)], browser, timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"the browser dumped no DOM (exit status {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
    return done.stdout


@dataclass(frozen=True)
class RenderCheck:
    """What the rendered DOM holds: tables, their data cells and their texts, images
    (and how many are embedded PNG data URIs), and any external reference."""

    tables: int
    cells: int
    images: int
    data_images: int
    external: tuple[str, ...]
    cell_texts: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """At least one table with cells, every image embedded, nothing external."""
        return self.tables > 0 and self.cells > 0 and self.images == self.data_images and not self.external


class _DomCounter(HTMLParser):
    """Counts tables, ``<td>`` cells (with their text), images and external references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables = self.images = self.data_images = 0
        self.cells: list[str] = []
        self.external: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tables += tag == "table"
        if tag == "td":
            self._cell = []
        if tag == "img":
            self.images += 1
            self.data_images += (values.get("src") or "").startswith("data:image/png;base64,")
        for attr in ("src", "href"):
            ref = values.get(attr) or ""
            if ref and not ref.startswith(("data:", "#")):
                self.external.append(ref)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def check_dom(dom: str) -> RenderCheck:
    """Count what `RenderCheck` reports in an HTML text."""
    parser = _DomCounter()
    parser.feed(dom)
    parser.close()
    return RenderCheck(parser.tables, len(parser.cells), parser.images, parser.data_images,
                       tuple(parser.external), tuple(parser.cells))


def render_check(html_path: str | Path, *, browser: str | None = None, timeout: float = TIMEOUT_S) -> RenderCheck:
    """Load ``html_path`` in the headless browser and check its rendered DOM (`RenderCheck`)."""
    return check_dom(dump_dom(html_path, browser=browser, timeout=timeout))


__all__ = ["BrowserNotFoundError", "RenderCheck", "check_dom", "dump_dom", "find_browser", "render_check",
           "screenshot"]
