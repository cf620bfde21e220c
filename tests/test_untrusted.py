"""Regression tests for issue #17 (reliability, round 3): text from stores, checkpoints, folders and logs in the
report (4), workers that outlive a killed analyze (8), stores that depend on how many processes computed them
(9), training logs that broke plots and the report (11). Numbered as in the issue."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.errors import SpecdynError
from specdyn.plots import dispatch
from tests.test_reliability import cli, tiny

MARKUP = '<xss id="1">&amp;'


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


# 4 ------------------------------------------------------------------------------------------------------------


def test_4_every_string_from_a_store_a_log_or_a_folder_is_escaped_in_the_report(tmp_path, monkeypatch):
    import torch

    from tests.test_damage import edit_attrs

    run = tmp_path / f"run{MARKUP}"  # a folder, a tensor and checkpoint files named with markup
    checkpoints = [f"step_{s}{MARKUP}.safetensors" for s in (0, 10)]
    for step, name in zip((0, 10), checkpoints):
        g = torch.Generator().manual_seed(step)
        sd = {f"a{MARKUP}.weight": torch.randn(6, 5, generator=g), "b.weight": torch.randn(3, 6, generator=g)}
        tiny(run, step, sd=sd, name=name)
    history = [{"step": s, "train_loss": 1.0 / (s + 1), "val_loss": 2.0} for s in (0, 10)]
    (run / "run.json").write_text(json.dumps({"task": MARKUP, "config": {MARKUP: MARKUP}, "history": history}))
    analyze([run], None, AnalyzeOptions(svd_route="gram"), show_progress=False)
    store = run / "specdyn.zarr"
    revisions = {c: MARKUP for c in checkpoints}
    edit_attrs(store, lambda a: a["specdyn"]["sources"][0].update(repo=MARKUP, revisions=revisions))
    edit_attrs(store, lambda a: a["specdyn"].update(structure=MARKUP, model_type=MARKUP, architecture=MARKUP))
    edit_attrs(store, lambda a: a.update(kinds={k: MARKUP for k in a["kinds"]}), "matrix")
    out = tmp_path / "r.html"
    monkeypatch.setattr(dispatch, "make_figure", no_figure)  # the figures are pictures: only the text matters here
    result = cli("report", run, "-o", out)
    assert result.exit_code == 0, result.stderr
    page = out.read_text()
    parser = Tags()
    parser.feed(page)
    assert "xss" not in parser.tags and "<xss" not in page
    assert page.count("&lt;xss") >= 5  # kinds, task, config, revisions, folder, figure notes: shown as text


def no_figure(kind, stores, **options):
    raise SpecdynError(f"no figure here {MARKUP}")


# 8 ------------------------------------------------------------------------------------------------------------


def _tagged(tag: str) -> list[int]:
    """Processes whose environment holds this tag (workers inherit it from the analyze that started them)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if tag.encode() in (p / "environ").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_8_workers_exit_when_analyze_is_killed(tmp_path):
    from tests.series import write_series

    write_series(tmp_path / "run", steps=(0, 10, 20))
    tag = f"SPECDYN_TEST_TAG={uuid.uuid4().hex}"
    code = (
        "from specdyn.analyze import analyze, AnalyzeOptions;"
        f"analyze([{str(tmp_path / 'run')!r}], None, AnalyzeOptions(svd_route='gram', workers=2), show_progress=False)"
    )
    env = dict(os.environ, SPECDYN_FAULT_AT="row:done#2", PYTHONPATH=str(Path(__file__).parents[1]))
    env[tag.split("=")[0]] = tag.split("=")[1]
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
        assert proc.returncode == -signal.SIGKILL  # killed itself once workers had computed a row
        deadline = time.time() + 15
        while _tagged(tag) and time.time() < deadline:
            time.sleep(0.2)
        assert not _tagged(tag), "workers (or the resource tracker) outlived the killed analyze"
    finally:
        for pid in _tagged(tag):  # never leave one behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# 9 ------------------------------------------------------------------------------------------------------------


def test_9_the_lapack_route_does_not_depend_on_the_thread_count():
    """A worker computes with cores / workers BLAS threads, a serial run with all of them: the stored spectrum
    must not depend on it beyond float64 rounding (a float32 gesdd moved vectors by 3e-4 here)."""
    import torch

    from specdyn.spectral.svd import svd_lapack

    W = np.random.default_rng(0).standard_normal((1024, 256)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        out = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out[threads] = svd_lapack(W, 64)
    finally:
        torch.set_num_threads(before)
    a, b = out[1], out[2]
    assert np.abs(a.s - b.s).max() <= 1e-12 * a.s[0]
    assert np.abs(a.U - b.U).max() <= 1e-6 and np.abs(a.V - b.V).max() <= 1e-6


# 11 -----------------------------------------------------------------------------------------------------------

BAD_LOGS = {
    "step Infinity": ("run.json", '{"history": [{"step": Infinity, "train_loss": 1.0}]}'),
    "step 10**400": ("run.json", '{"history": [{"step": 1' + "0" * 400 + ', "train_loss": 1.0}]}'),
    "nesting 200,000 deep": ("run.json", "[" * 200_000 + "]" * 200_000),
    "log_history 5": ("trainer_state.json", '{"log_history": 5}'),
    "huge values": (
        "trainer_state.json",
        '{"log_history": [{"step": 1' + "0" * 400 + ', "loss": 1' + "0" * 400 + "}]}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LOGS))
def test_11_a_bad_training_log_is_skipped_with_one_warning(tmp_path, case):
    from specdyn.console import SpecdynWarning
    from specdyn.io.runmeta import read_run_info, read_run_log

    name, text = BAD_LOGS[case]
    (tmp_path / name).write_text(text)
    with pytest.warns(SpecdynWarning) if name == "run.json" or case == "log_history 5" else _none() as seen:
        log = read_run_log([tmp_path])
    assert not log.history and (seen is None or len(seen) == 1)
    if name == "run.json" and case.startswith("nesting"):
        from specdyn.errors import SpecdynError

        with pytest.raises(SpecdynError, match="not valid JSON"):
            read_run_info(tmp_path)


def test_11_plot_and_report_draw_without_a_bad_log(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for s in (0, 10):
        tiny(run, s)
    analyze([run], None, AnalyzeOptions(svd_route="gram"), show_progress=False)
    (run / "run.json").write_text(BAD_LOGS["nesting 200,000 deep"][1])
    (run / "trainer_state.json").write_text(BAD_LOGS["log_history 5"][1])
    for args in (("plot", "metrics", run, "-o", tmp_path / "m.png"), ("report", run, "-o", tmp_path / "r.html")):
        if args[0] == "report":  # the report draws every figure kind: the log is what is tested here
            monkeypatch.setattr(dispatch, "make_figure", no_figure)
        result = cli(*args)
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
        assert "unreadable training log" in result.stderr


class _none:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
