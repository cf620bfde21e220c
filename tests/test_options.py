"""Options declared once: each command's flags are generated from its options dataclass, and the Python API and
the CLI refuse the same inputs with the same one-line message and exit code."""

import dataclasses

import pytest
from typer.testing import CliRunner

from specdyn.analyze.options import AnalyzeOptions
from specdyn.cli import app
from specdyn.commands.common import flag_of
from specdyn.errors import SpecdynError
from specdyn.evals.options import InterpOptions, LotteryOptions, PruneOptions
from specdyn.plots.options import PlotOptions
from specdyn.train_options import TrainOptions

runner = CliRunner()

CASES = [
    # (options class, API kwargs, CLI args, expected message)
    (AnalyzeOptions, {"topk": -1}, ["analyze", "RUN", "--topk", "-1"], "--topk -1: must be at least 0"),
    (AnalyzeOptions, {"order": "time"}, ["analyze", "RUN", "--order", "time"], "--order 'time': use step, name"),
    (AnalyzeOptions, {"svd_route": "qr"}, ["analyze", "RUN", "--svd-route", "qr"], "--svd-route 'qr': use auto"),
    (AnalyzeOptions, {"device": "tpu"}, ["analyze", "RUN", "--device", "tpu"], "--device 'tpu': use 'cpu' or 'cuda'"),
    (AnalyzeOptions, {"workers": 0}, ["analyze", "RUN", "--workers", "0"], "--workers 0: must be at least 1"),
    (PruneOptions, {"keep": [1.5]}, ["prune-eval", "RUN", "--keep", "1.5"], "--keep 1.5: must be in (0, 1]"),
    (PruneOptions, {"every": 0}, ["prune-eval", "RUN", "--every", "0"], "--every 0: must be at least 1"),
    (InterpOptions, {"points": 1}, ["interpolate", "A", "B", "--points", "1"], "--points 1: must be at least 2"),
    (InterpOptions, {"keep": 0.0}, ["interpolate", "A", "B", "--keep", "0"], "--keep 0: must be in (0, 1]"),
    (LotteryOptions, {"zip": "order"}, ["lottery", "RUN", "--zip", "order"], "--zip 'order': use step, index"),
    (LotteryOptions, {"densities": [0.0]}, ["lottery", "RUN", "--density", "0"], "--density 0"),
    (TrainOptions, {"save_every": 2, "save_log": 3}, ["train", "mlp", "--save-every", "2", "--save-log", "3"],
     "pass --save-every or --save-log, not both"),
    (TrainOptions, {"density": 0.1}, ["train", "mlp", "--density", "0.1"], "--mask-from and --density go together"),
    (PlotOptions, {"dpi": 5}, ["plot", "sv", "RUN", "-o", "f.png", "--dpi", "5"], "--dpi 5: must be at least 10"),
    (PlotOptions, {"x": "time"}, ["plot", "sv", "RUN", "-o", "f.png", "--x", "time"], "--x 'time': use step, index"),
    (TrainOptions, {"format": "onnx"}, ["train", "mlp", "--format", "onnx"], "--format 'onnx': use safetensors"),
]  # fmt: skip


@pytest.mark.parametrize("cls, kwargs, argv, message", CASES, ids=[c[2][0] + " " + c[3][:24] for c in CASES])
def test_api_and_cli_refuse_the_same_input_with_the_same_message(cls, kwargs, argv, message):
    with pytest.raises(SpecdynError) as api:
        cls(**kwargs)
    assert message in api.value.message
    res = runner.invoke(app, argv)
    assert res.exit_code == api.value.code, res.output
    assert "Traceback" not in res.output
    assert api.value.message in " ".join(res.output.split())


@pytest.mark.parametrize("cls, command", [(AnalyzeOptions, "analyze"), (PruneOptions, "prune-eval"),
                                          (InterpOptions, "interpolate"), (LotteryOptions, "lottery"),
                                          (TrainOptions, "train"), (PlotOptions, "plot")])  # fmt: skip
def test_every_field_is_a_flag_of_its_command(cls, command):
    from specdyn.plots.registry import KINDS

    argvs = [[command, kind, "--help"] for kind in KINDS] if command == "plot" else [[command, "--help"]]
    text = "".join(runner.invoke(app, argv, env={"COLUMNS": "200"}).output for argv in argvs)
    for f in dataclasses.fields(cls):
        assert flag_of(f) in text, f"{command}: {f.name} has no {flag_of(f)} in --help"


def test_options_are_frozen_so_no_loop_can_change_them():
    opts = AnalyzeOptions(overwrite=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.overwrite = False
    assert opts.replace(overwrite=False).overwrite is False and opts.overwrite is True


def test_defaults_are_valid_and_cli_lists_arrive_parsed():
    for cls in (AnalyzeOptions, PruneOptions, InterpOptions, LotteryOptions, TrainOptions, PlotOptions):
        cls()
    assert PruneOptions().keep == [0.5] and LotteryOptions().densities == [0.05]
