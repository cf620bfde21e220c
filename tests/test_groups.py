"""Conditions of several seeds: `specdyn train --seeds`, `plot compare --group/--groups` (mean ± std over seeds,
ddof 0, steps aligned by value), the step-grid check and `--interpolate-steps`, and the report's conditions."""

import json

import matplotlib.collections
import numpy as np
import pytest
from typer.testing import CliRunner

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.plots import PLOTS
from specdyn.plots.groups import Condition, parse_group_args, read_group_file, seed_mean
from specdyn.plots.runlog import read_run_log

runner = CliRunner()
TINY = ["--set", "width=16", "--set", "in_dim=8", "--set", "n_train=64", "--set", "n_val=32", "--batch-size", "32"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Three tiny seeds of one condition, trained with `specdyn train --seeds 0,1,2` and analyzed."""
    base = tmp_path_factory.mktemp("groups")
    args = ["train", "mlp", "-o", str(base / "wd1"), "--max-steps", "8", "--save-every", "2", "-q",
            "--seeds", "0,1,2", "--threads", "1", "--json", *TINY]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summaries = json.loads(res.stdout)
    assert [s["run_dir"] for s in summaries] == [str(base / f"wd1-s{i}") for i in range(3)]
    for i in range(3):
        analyze([base / f"wd1-s{i}"], options=AnalyzeOptions(svd_route="gram"), show_progress=False)
    return base


def test_seeds_train_distinct_runs(seeds):
    configs = [json.loads((seeds / f"wd1-s{i}" / "run.json").read_text())["config"] for i in range(3)]
    assert [c["seed"] for c in configs] == [0, 1, 2]
    sv = [
        specdyn.open_store(seeds / f"wd1-s{i}").sv(specdyn.open_store(seeds / "wd1-s0").matrices[0]) for i in range(3)
    ]
    assert not np.allclose(sv[0], sv[1])


def _band(ax):
    (band,) = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    return band


def test_group_mean_and_std_over_seeds(seeds):
    stores = [specdyn.open_store(seeds / f"wd1-s{i}") for i in range(3)]
    for metric in ("effective_rank", "alpha", "alignment_score"):
        fig = PLOTS["compare"]([], metric=metric, groups=[Condition("wd1", stores)])
        ax = fig.axes[0]
        (line,) = ax.lines
        per_seed = np.stack(
            [
                np.nanmean(st.alignment_score() if metric == "alignment_score" else st.metric(metric), axis=1)
                for st in stores
            ]
        )
        np.testing.assert_allclose(line.get_ydata(), per_seed.mean(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(line.get_xdata(), stores[0].steps)
        verts = _band(ax).get_paths()[0].vertices  # the band's outline: mean ± std (ddof 0)
        assert np.isclose(verts[:, 1].max(), (per_seed.mean(0) + per_seed.std(0, ddof=0)).max())
        assert line.get_label() == "wd1 (n=3)"
    fig = PLOTS["compare"]([], metric="train_loss", groups=[Condition("wd1", stores)])
    losses = np.stack([read_run_log(st).history["train_loss"] for st in stores])
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), losses.mean(0), rtol=1e-12)


def test_cli_group_glob_and_file(seeds, tmp_path):
    out = tmp_path / "c.png"
    res = runner.invoke(app, ["plot", "compare", "--group", f"wd1={seeds}/wd1-s*", "--metric", "alpha", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000
    (tmp_path / "g.toml").write_text(f'[groups]\nwd1 = ["{seeds}/wd1-s*"]\nsingle = ["{seeds}/wd1-s0"]\n')
    groups = read_group_file(tmp_path / "g.toml")
    assert [len(v) for v in groups.values()] == [3, 1]
    (tmp_path / "g.json").write_text(json.dumps({"groups": {"wd1": ["../" + seeds.name + "/wd1-s*"]}}))
    res = runner.invoke(app, ["plot", "compare", "--groups", str(tmp_path / "g.toml"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["plot", "sv", "--group", f"wd1={seeds}/wd1-s*", "-o", str(out)])
    assert res.exit_code != 0 and "does not apply to `sv`" in res.output
    with pytest.raises(SpecdynError, match="matches no run dir"):
        parse_group_args(["x=/nonexistent/run-s*"])
    with pytest.raises(SpecdynError, match="NAME=GLOB"):
        parse_group_args(["runs/x"])


def test_step_grids_must_agree_unless_interpolated():
    a = (np.array([0, 10, 20]), np.array([1.0, 2.0, 3.0]))
    b = (np.array([0, 5, 20]), np.array([3.0, 4.0, 5.0]))
    with pytest.raises(SpecdynError, match="step grids differ.*--interpolate-steps"):
        seed_mean([a, b], "group g")
    steps, mean, std = seed_mean([a, b], "group g", interpolate=True)
    np.testing.assert_array_equal(steps, [0, 10, 20])
    b_at = np.interp([0, 10, 20], b[0], b[1])
    np.testing.assert_allclose(mean, (a[1] + b_at) / 2)
    np.testing.assert_allclose(std, np.std([a[1], b_at], axis=0, ddof=0))


def test_report_takes_conditions(seeds, tmp_path):
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", "--group", f"wd1={seeds}/wd1-s*", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "Conditions" in page and "wd1: 3 runs" in page
    assert json.loads(res.stdout)["figures"] == 3  # metrics, alignment score, training curves
    assert page.count("<img") == 3 and 'class="note"' not in page
