"""The HTML book builds cleanly and reads offline (static checks of the build).

`ensure_build()` builds the book the way readers and CI do, with warnings as
errors (`jupyter-book build . -W -n --keep-going`), into the ordinary
`_build/html`. A build is reused while it is newer than every source file
(config, table of contents, bibliography, book/, vendored assets), so the
browser test (tests/test_browser.py) and these checks share one build. The
build does not execute notebooks: it renders the outputs committed in them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
STAMP = BUILD / ".bnbook-build.json"
BUILD_COMMAND = ["build", ".", "-W", "-n", "--keep-going"]
SOURCES = ["_config.yml", "_toc.yml", "references.bib", "book", "_vendor", "tools"]
# Changes Sphinx's incremental build does not notice: rebuild every page then.
FULL_REBUILD_SOURCES = ["_config.yml", "_toc.yml", "_vendor", "tools"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def toc_pages() -> list[str]:
    """Document names (e.g. 'book/02_forward') in reading order: root first."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


def chapter_pages() -> list[str]:
    """The numbered chapters (the notebooks), in reading order."""
    return [p for p in toc_pages() if (ROOT / f"{p}.ipynb").exists()]


def _newest_source_mtime(sources=SOURCES) -> float:
    newest = 0.0
    for name in sources:
        path = ROOT / name
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        for f in files:
            if ".ipynb_checkpoints" in f.parts or "__pycache__" in f.parts or not f.is_file():
                continue  # (the build itself writes tools/__pycache__)
            newest = max(newest, f.stat().st_mtime)
    return newest


def _jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]


def ensure_build() -> dict:
    """Build the book unless a build newer than every source exists.

    Returns the record of that build: returncode, warnings (lines), seconds,
    output (the log's tail).
    """
    full = True
    if STAMP.exists() and (HTML / "index.html").exists():
        record = json.loads(STAMP.read_text())
        stamp_time = STAMP.stat().st_mtime
        if stamp_time > _newest_source_mtime():
            record["reused"] = True
            return record
        full = stamp_time <= _newest_source_mtime(FULL_REBUILD_SOURCES)
    t0 = time.perf_counter()
    proc = subprocess.run(
        _jupyter_book() + BUILD_COMMAND + (["--all"] if full else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    seconds = time.perf_counter() - t0
    log = ANSI.sub("", proc.stdout + "\n" + proc.stderr)
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    record = {
        "returncode": proc.returncode,
        "warnings": warnings,
        "seconds": round(seconds, 1),
        "command": "jupyter-book " + " ".join(BUILD_COMMAND),
        "output": log[-4000:],
    }
    BUILD.mkdir(exist_ok=True)
    STAMP.write_text(json.dumps(record, indent=1))
    record["reused"] = False
    return record


@pytest.fixture(scope="module")
def build():
    return ensure_build()


def test_build_has_no_warnings(build):
    """`jupyter-book build . -W -n --keep-going` passes with zero warnings."""
    assert build["warnings"] == [], "build warnings:\n" + "\n".join(build["warnings"])
    assert build["returncode"] == 0, build["output"]
    for page in toc_pages():
        assert (HTML / f"{page}.html").exists(), f"{page}.html was not built"


def _first_markdown_line(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            return source.lstrip().splitlines()[0] if source.strip() else ""
    return ""


def test_every_chapter_has_a_label_and_a_number(build):
    """Each chapter notebook opens with its `(ch-...)=` label; pages are numbered 1..n."""
    labels = []
    for number, page in enumerate(chapter_pages(), start=1):
        first = _first_markdown_line(ROOT / f"{page}.ipynb")
        match = re.fullmatch(r"\((ch-[a-z0-9-]+)\)=", first.strip())
        assert match, f"{page}.ipynb: first markdown cell should start with a '(ch-...)=' label, found {first!r}"
        labels.append(match.group(1))
        html = (HTML / f"{page}.html").read_text()
        h1 = re.search(r"<h1>(.*?)<a class=\"headerlink\"", html, re.S)  # the page's own title
        assert h1, f"{page}.html has no title"
        assert f'<span class="section-number">{number}. </span>' in h1.group(1), (
            f"{page}.html: title should carry chapter number {number}: {h1.group(1)[:200]}"
        )
    assert len(set(labels)) == len(labels), f"duplicate chapter labels: {labels}"


def test_launch_buttons_on_every_chapter(build):
    """Binder and Colab buttons point at each chapter's notebook in the repository."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = urlparse(config["repository"]["url"]).path.strip("/")
    branch = config["repository"].get("branch", "main")
    for page in chapter_pages():
        html = (HTML / f"{page}.html").read_text()
        binder = f"https://mybinder.org/v2/gh/{repo}/{branch}?urlpath=lab/tree/{page}.ipynb"
        colab = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{page}.ipynb"
        assert binder in html, f"{page}.html: no Binder button ({binder})"
        assert colab in html, f"{page}.html: no Colab button ({colab})"


class _Assets(HTMLParser):
    """Collects the URLs a page loads by itself (scripts, styles, images, frames)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "audio", "video", "source") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            rel = (a.get("rel") or "").lower()
            if any(r in rel for r in ("stylesheet", "preload", "icon", "modulepreload", "prefetch")):
                self.urls.append(a["href"])


def _is_remote(url: str) -> bool:
    return url.startswith("//") or urlparse(url).scheme in ("http", "https")


def test_pages_load_nothing_from_other_hosts(build):
    """Offline reading: no page or stylesheet of the build refers to a CDN for something it loads."""
    remote = []
    for page in HTML.rglob("*.html"):
        if "_static" in page.parts:
            continue
        parser = _Assets()
        parser.feed(page.read_text(errors="replace"))
        remote += [f"{page.relative_to(HTML)}: {u}" for u in parser.urls if _is_remote(u)]
    for css in (HTML / "_static").rglob("*.css"):
        for url in re.findall(r"""url\(\s*['"]?([^'")]+)""", css.read_text(errors="replace")):
            if _is_remote(url):
                remote.append(f"{css.relative_to(HTML)}: {url}")
        for url in re.findall(r"""@import\s+(?:url\()?\s*['"]([^'"]+)""", css.read_text(errors="replace")):
            if _is_remote(url):
                remote.append(f"{css.relative_to(HTML)}: {url}")
    assert remote == [], "assets loaded from other hosts:\n" + "\n".join(remote)
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is not in the build"
    assert (HTML / "_static" / "widgets" / "embed-amd.js").exists(), "widget manager is not in the build"


def test_every_chapter_ends_with_summary_and_exercises(build):
    """Each chapter has a Summary and an Exercises section; 2-5 solutions, each a 'Solution' dropdown."""
    problems = []
    for page in chapter_pages():
        html = (HTML / f"{page}.html").read_text()
        headings = re.findall(r"<h2>(?:<span class=\"section-number\">[^<]*</span>)?([^<]*)<a class=\"headerlink\"", html)
        if "Summary" not in headings or "Exercises" not in headings:
            problems.append(f"{page}: h2 sections {headings} lack Summary or Exercises")
            continue
        exercises = html[html.index('<section id="exercises">'):]
        # a solution is a plain "Solution" admonition or sphinx-exercise's "Solution to Exercise N"
        admonitions = re.findall(r'<div class="([^"]*\badmonition\b[^"]*)"[^>]*>\s*<p class="admonition-title">(.*?)</p>',
                                 exercises, re.DOTALL)
        solutions = [a for a in admonitions if re.sub(r"<[^>]+>", "", a[1]).split()[:1] == ["Solution"]]
        if not 2 <= len(solutions) <= 5:
            problems.append(f"{page}: {len(solutions)} 'Solution' admonitions in Exercises (want 2-5)")
        closed = [a for a in solutions if "dropdown" in a[0].split()]
        if len(closed) != len(solutions):
            problems.append(f"{page}: {len(solutions) - len(closed)} solutions are not dropdowns")
    assert problems == [], "\n".join(problems)
