"""`specdyn report`: one self-contained HTML page; its tables hold the stores' values, every figure is a valid
embedded PNG, and a headless Chromium loads every image (skipped only where no browser is installed)."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

import specdyn
from specdyn.cli import app
from specdyn.plots import prune
from specdyn.report import build_report, count_figures, interesting_matrices
from specdyn.store import write_session
from tests.synthetic_store import grokking_log, transformer_shapes, write_store

runner = CliRunner()
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    steps = [0, 10, 30, 100, 300, 1000]
    out = []
    for i, wd in enumerate((1.0, 0.0)):
        path = base / f"modadd-wd{wd:g}" / "specdyn.zarr"
        log = grokking_log(steps, config={"weight_decay": wd})
        out.append(
            specdyn.open_store(
                write_store(path, transformer_shapes(2, d=8, vocab=12), steps, seed=i, top=8, run_log=log)
            )
        )
    return out


@pytest.fixture(scope="module")
def page(stores):
    return build_report(stores, dpi=50)


class Page(HTMLParser):
    """Collects <img> sources, section headings and table cells."""

    def __init__(self):
        super().__init__()
        self.imgs, self.h2, self.h3, self.cells, self._tag, self.external = [], [], [], [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.imgs.append(a["src"])
        for key in ("src", "href"):
            v = a.get(key, "")
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)

    def handle_data(self, data):
        if self._tag in ("h2", "h3", "td") and data.strip():
            {"h2": self.h2, "h3": self.h3, "td": self.cells}[self._tag].append(data.strip())

    def handle_endtag(self, tag):
        self._tag = None


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    return p


def test_interesting_matrices_match_numpy(stores):
    st = stores[0]
    pick = interesting_matrices(st, n=2)
    er = st.metric("effective_rank")
    drop = er[0] - er[-1]
    assert [n for n, _ in pick["rank_drop"]] == [st.matrices[j] for j in np.argsort(-drop)[:2]]
    stab = st.metric("stability_score")[-2]
    assert [n for n, _ in pick["least_stable"]] == [st.matrices[j] for j in np.argsort(stab)[:2]]
    assert pick["least_stable"][0][1] == pytest.approx(stab.min())


def test_report_is_self_contained_with_every_figure(stores, page):
    p = parse(page)
    assert not p.external  # nothing loaded from outside the file
    assert p.h2 == ["Comparison", "weight_decay=1", "weight_decay=0"]
    assert len(p.imgs) == count_figures(stores)  # no figure failed to draw
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        img = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100
    for heading in (
        "At a glance",
        "Effective rank of every matrix",
        "Stability",
        "Alignment",
        "Singular values of the most interesting matrices",
        "Spectral metrics, all runs",
        "Training curves, all runs",
    ):
        assert heading in p.h3
    assert "Low-rank pruning" not in p.h3 and "Interpolation" not in p.h3  # no results in these stores
    # the summary table holds the store's final metrics
    st = stores[0]
    er = st.metric("effective_rank")
    j = st.matrices.index("model.layers.1.linear1.weight")
    assert f"{er[0, j]:.3f} → {er[-1, j]:.3f}" in p.cells
    assert "1.linear1" in p.cells


@pytest.fixture(scope="module")
def one_store_cli(stores, tmp_path_factory):
    """`specdyn report` on one run dir: the one page drawn for both the CLI test and the one-store test."""
    out = tmp_path_factory.mktemp("cli") / "sub" / "report.html"
    argv = ["report", str(stores[0].path.parent), "-o", str(out), "--json", "--dpi", "50", "--title", "one run"]
    return runner.invoke(app, argv), out


def test_one_store_has_no_comparison(one_store_cli):
    _, out = one_store_cli
    page = out.read_text()
    assert parse(page).h2 == ["modadd-wd1"]
    assert "<title>one run</title>" in page


def test_prune_results_are_detected(stores, tmp_path):
    copy = tmp_path / "copy" / "specdyn.zarr"
    shutil.copytree(stores[0].path, copy)
    assert not prune.has_results(specdyn.open_store(copy))

    with write_session(copy, "test") as root:  # as evaluation commands write: metadata re-consolidated
        root.require_group("evals/prune")
    assert prune.has_results(specdyn.open_store(copy))


def test_cli_report(stores, one_store_cli, tmp_path):
    r, out = one_store_cli
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["written"] == [str(out)] and doc["figures"] == count_figures(stores[:1])
    assert out.read_text().startswith("<!DOCTYPE html>")
    r = runner.invoke(app, ["report", str(stores[0].path), "-o", str(tmp_path / "r.pdf")])
    assert r.exit_code == 2 and "*.html" in r.stderr
    r = runner.invoke(app, ["report", str(tmp_path / "none"), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 6 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.mark.skipif(browser() is None, reason="no Chromium/Chrome installed (Debian: apt-get install chromium)")
def test_every_figure_loads_in_headless_chromium(stores, page, tmp_path):
    """Chromium renders the page; a script added for the test writes each image's decoded width into the DOM."""
    probe = (
        "<script>window.addEventListener('load',()=>{document.body.setAttribute('data-widths',"
        "JSON.stringify([...document.images].map(i=>i.complete?i.naturalWidth:0)));});</script>"
    )
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    cmd = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        path.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-widths="([^"]*)"', dom)
    assert m, "the page did not finish loading"
    widths = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(widths) == count_figures(stores) and all(w > 100 for w in widths), widths
