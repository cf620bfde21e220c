"""The command line as a whole: one meaning per flag, --quiet and --json wherever a command prints, usage errors
exit 2, a subcommand per plot kind with its own options, help text printed as written."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from specdyn.analyze import analyze
from specdyn.cli import COMMANDS, app
from specdyn.commands.plot import kind_fields
from specdyn.options import flag_of
from specdyn.plots.options import PlotOptions
from specdyn.plots.registry import KINDS
from tests.series import write_series

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def help_of(*argv) -> str:
    res = runner.invoke(app, [*argv, "--help"], env=WIDE)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    write_series(run, steps=(0, 10, 20))
    analyze([run], show_progress=False)
    return run


def test_plot_kind_help_lists_that_kinds_options_only():
    fields = {f.name: flag_of(f) for f in dataclasses.fields(PlotOptions)}
    for kind in KINDS:
        text = help_of("plot", kind)
        takes = kind_fields(kind)
        for name, flag in fields.items():
            shown = f"{flag} " in text
            assert shown == (name in takes or (name == "loss" and "loss" in takes)), (kind, flag)
    assert all(kind in help_of("plot") for kind in KINDS)


def test_help_prints_brackets_as_written():
    assert '{"written": [paths]}' in help_of("plot", "sv")
    assert '{"written": [path], "figures": n}' in help_of("report")
    assert "CKPT_A CKPT_B [SPLIT_STEP [LABEL]]" in help_of("interpolate")


def test_no_help_text_has_a_bracket_rich_would_eat():
    import re

    import typer.main

    from specdyn.commands.plot import PlotGroup

    group = typer.main.get_command(app)
    commands = [c for name, c in group.commands.items() if name != "plot"]
    plot = group.commands["plot"]
    assert isinstance(plot, PlotGroup)
    commands += [plot.get_command(None, kind) for kind in KINDS]
    for c in commands:
        for text in [c.help or ""] + [getattr(p, "help", None) or "" for p in c.params]:
            assert not re.search(r"(?<!\\)\[", text), (c.name, text)  # `\[` prints a bracket; `[` starts markup


@pytest.mark.parametrize("command", [c.replace("_", "-") for c in COMMANDS])
def test_every_command_has_quiet_and_json(command):
    argv = ["plot", "sv"] if command == "plot" else [command]
    text = help_of(*argv)
    assert "--quiet" in text and "-q" in text and "--json" in text, command


def test_one_name_per_concept():
    # a range of steps is --steps a:b wherever it appears; train's step count has its own name
    for command in ("analyze", "prune-eval", "export", "fetch"):
        assert "--steps" in help_of(command) and "a:b" in help_of(command)
    assert "--max-steps" in help_of("train") and "--steps " not in help_of("train")
    # --pairs is only the plots' pair selection; the pair files have their own names
    assert "--alignment-pairs" in help_of("analyze") and "--pairs " not in help_of("analyze")
    assert "--checkpoint-pairs" in help_of("interpolate") and "--pairs " not in help_of("interpolate")
    # task config overrides are --set/-s everywhere
    for command in ("train", "prune-eval", "interpolate"):
        assert "--set" in help_of(command) and "--config" not in help_of(command)


def test_old_spellings_keep_working_with_a_note(tmp_path):
    res = runner.invoke(app, ["train", "mlp", "--steps", "7", "--show-config"])
    assert res.exit_code == 0 and json.loads(res.stdout)["config"]["steps"] == 7
    assert "note: --steps is now --max-steps" in res.stderr
    res = runner.invoke(app, ["prune-eval", str(tmp_path / "none"), "--config", "lr=0.1"])
    assert "note: --config is now --set" in res.stderr and res.exit_code == 6
    res = runner.invoke(app, ["analyze", str(tmp_path / "none"), "--pairs", str(tmp_path / "p.txt")])
    assert "note: --pairs is now --alignment-pairs" in res.stderr and res.exit_code == 1
    res = runner.invoke(app, ["interpolate", "--pairs", str(tmp_path / "p.txt")])
    assert "note: --pairs is now --checkpoint-pairs" in res.stderr and res.exit_code != 0


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "{run}", "--every", "0"],
        ["analyze", "{run}", "--steps", "1-2"],
        ["train", "mlp", "--density", "0.5"],
        ["train", "mlp", "--set", "lr"],
        ["train", "mlp", "--density", "0.1,0.2", "--mask-from", "{run}/step_0.safetensors"],
        ["interpolate", "{run}/step_0.safetensors", "{run}/step_10.safetensors", "--keep", "0.2,0.3"],
        ["plot", "prune", "{run}", "-o", "{tmp}/f.png", "--keep", "0.2,0.3"],
        ["prune-eval", "{run}", "--keep", "0"],
        ["interpolate", "{run}"],
        ["lottery", "{run}", "--density", "2"],
        ["fetch", "org/name"],
        ["export", "{run}", "--format", "xls"],
        ["report", "{run}", "-o", "{tmp}/r.pdf"],
        ["plot", "sv", "{run}", "-o", "{tmp}/f.png", "--x", "time"],
        ["plot", "sv", "{run}", "-o", "{tmp}/f.png", "--pair", "a"],
        ["plot", "nosuch", "{run}", "-o", "{tmp}/f.png"],
        ["info", "{run}", "--no-such-flag"],
    ],
)
def test_usage_errors_exit_2(run, tmp_path, argv):
    res = runner.invoke(app, [a.format(run=run, tmp=tmp_path) for a in argv])
    assert res.exit_code == 2, (argv, res.output)
    assert "Traceback" not in res.output


def test_plot_on_a_run_folder_without_store_says_to_analyze(tmp_path):
    write_series(tmp_path / "fresh", steps=(0,))
    res = runner.invoke(app, ["plot", "sv", str(tmp_path / "fresh"), "-o", str(tmp_path / "f.png")])
    assert res.exit_code == 6
    assert f"no specdyn store here; run `specdyn analyze {tmp_path / 'fresh'}` first" in res.stderr


def test_info_step_applies_without_json_and_shows_stability_against_the_previous_checkpoint(run):
    text = runner.invoke(app, ["info", str(run), "--step", "10"], env=WIDE).stdout
    assert "matrices at step 10" in text and "stability vs prev." in text
    doc = json.loads(runner.invoke(app, ["info", str(run), "--json"]).stdout)
    assert doc["step"] == 20 and all(m["stability_score"] == pytest.approx(1.0) for m in doc["matrices"])
    prev = [m["stability_prev_score"] for m in doc["matrices"]]
    assert all(0 < p < 1 for p in prev)  # informative: this series still moves


def test_quiet_leaves_stderr_empty(run, tmp_path):
    res = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "t.csv"), "-q"])
    assert res.exit_code == 0 and res.stderr == ""
    res = runner.invoke(app, ["plot", "sv", str(run), "-o", str(tmp_path / "f.png"), "--dpi", "40", "-q"])
    assert res.exit_code == 0 and res.stderr == ""
