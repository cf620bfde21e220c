"""Finding the task for a checkpoint (built-in, user file, user module, checkpoint metadata) and matching its
model to the checkpoint's tensors; the example user task end to end."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from specdyn.cli import app
from specdyn.errors import SpecdynError
from specdyn.evals.taskload import (
    Endpoint,
    check_same_architecture,
    load_state_,
    match_state,
    read_state,
    resolve_task,
)
from specdyn.options import parse_key_values
from tests.eval_tasks import TinyTask, analyzed, mlp_task, spec, write_series

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def test_user_task_from_a_file_and_from_a_module(tmp_path):
    write_series(tmp_path / "run", mlp_task, steps=(0,))
    ckpt = tmp_path / "run" / "step_0.safetensors"
    task, described = resolve_task(spec("mlp_task"), ckpt)
    assert task.name == "tiny-mlp" and described["spec"] == spec("mlp_task")
    task2, _ = resolve_task("tests.eval_tasks:TinyTask", ckpt)  # a class is instantiated
    assert isinstance(task2, TinyTask)


@pytest.mark.parametrize(
    "task_spec,message",
    [
        ("nosuch/file.py:task", "does not exist"),
        ("tests/eval_tasks.py:nothing", "defines no 'nothing'"),
        ("tests.eval_tasks:TASK_FILE", "is not a task"),
        ("tests.no_such_module:task", "cannot import"),
        ("not-a-task", "no such built-in task"),
    ],
)
def test_bad_task_specs_fail_in_one_line(tmp_path, monkeypatch, task_spec, message):
    monkeypatch.chdir(REPO)
    write_series(tmp_path / "run", mlp_task, steps=(0,))
    with pytest.raises(SpecdynError, match=message) as e:
        resolve_task(task_spec, tmp_path / "run" / "step_0.safetensors")
    assert "\n" not in e.value.message


def test_a_task_file_that_raises_is_reported_in_one_line(tmp_path):
    bad = tmp_path / "bad_task.py"
    bad.write_text("import torch\nraise RuntimeError('no data here')\n")
    write_series(tmp_path / "run", mlp_task, steps=(0,))
    with pytest.raises(SpecdynError, match="RuntimeError: no data here"):
        resolve_task(f"{bad}:task", tmp_path / "run" / "step_0.safetensors")


def test_no_metadata_means_the_task_must_be_named(tmp_path):
    write_series(tmp_path / "run", mlp_task, steps=(0,))
    with pytest.raises(SpecdynError, match="pass --task"):
        resolve_task(None, tmp_path / "run" / "step_0.safetensors")


def _modadd_checkpoint(tmp_path, fmt="safetensors"):
    from specdyn.tasks import make_task
    from specdyn.tasks.base import config_dict
    from specdyn.train import write_checkpoint

    task = make_task("modadd", p=11, d_model=16, n_heads=2, d_mlp=24, data_frac=0.5)
    run = tmp_path / "modadd"
    run.mkdir()
    return write_checkpoint(run, fmt, 0, task.build_model().state_dict(), "modadd", config_dict(task.config)), task


@pytest.mark.parametrize("fmt", ["safetensors", "lightning-style"])
def test_builtin_task_and_config_come_from_the_checkpoint(tmp_path, fmt):
    path, original = _modadd_checkpoint(tmp_path, fmt)
    task, described = resolve_task(None, path)
    assert task.name == "modadd" and task.config == original.config
    assert described["config"]["p"] == 11
    ep = Endpoint.open(path)
    model = task.build_model()
    sm = match_state(model, ep.shapes, path)  # lightning-style names carry a `model.` prefix
    assert sm.prefix == ("model." if fmt == "lightning-style" else "")
    load_state_(model, read_state(ep.reader, sm, model))
    for k, v in original.build_model().state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_named_builtin_task_keeps_the_checkpoint_config_and_applies_overrides(tmp_path):
    path, _ = _modadd_checkpoint(tmp_path)
    task, _ = resolve_task("modadd", path, parse_key_values(["data_frac=0.3"], "--config", "data_frac=0.3"))
    assert task.config.p == 11 and task.config.data_frac == 0.3
    with pytest.raises(SpecdynError, match="no config key 'nope'"):
        resolve_task("modadd", path, {"nope": "1"})
    with pytest.raises(SpecdynError, match="--config 'data_frac': expected KEY=VALUE"):
        parse_key_values(["data_frac"], "--config", "data_frac=0.3")


def test_model_that_does_not_match_the_checkpoint_names_the_first_mismatch(tmp_path):
    path, _ = _modadd_checkpoint(tmp_path)
    ep = Endpoint.open(path)
    with pytest.raises(SpecdynError, match="'fc1.weight'.*checkpoint has no"):
        match_state(mlp_task.build_model(), ep.shapes, path)
    from specdyn.tasks import make_task

    wider = make_task("modadd", p=11, d_model=16, n_heads=2, d_mlp=32).build_model()
    with pytest.raises(SpecdynError, match=r"'layers.0.linear1.weight' is 32x16 in the model but 24x16"):
        match_state(wider, ep.shapes, path)
    shapes = dict(ep.shapes, extra=(3, 3))
    model = make_task("modadd", p=11, d_model=16, n_heads=2, d_mlp=24).build_model()
    with pytest.raises(SpecdynError, match="'extra'.*which the model lacks"):
        match_state(model, shapes, path)


def test_same_architecture_check():
    a = {"w": (3, 4), "b": (3,)}
    check_same_architecture(a, dict(a), Path("a"), Path("b"))
    with pytest.raises(SpecdynError, match="different architectures: 'w' is 3x5 vs 3x4"):
        check_same_architecture(a, {"w": (3, 5), "b": (3,)}, Path("a"), Path("b"))
    with pytest.raises(SpecdynError, match="has no tensor 'b'"):
        check_same_architecture(a, {"w": (3, 4)}, Path("a"), Path("b"))


def test_example_user_task_end_to_end(tmp_path):
    """examples/user_task.py: train a short series with it, then prune-eval and interpolate with --task FILE:task."""
    run = tmp_path / "blobs"
    module_spec = importlib.util.spec_from_file_location("user_task_example", REPO / "examples" / "user_task.py")
    example = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(example)
    example.train(run, steps=20, save_every=10)
    store = analyzed(run)
    task = f"{REPO / 'examples' / 'user_task.py'}:task"
    runner = CliRunner()
    res = runner.invoke(app, ["prune-eval", str(run), "--task", task, "--json", "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["checkpoints"] == 3 and s["svd"]["checkpoint"] == 0
    full, top = s["full"]["val"]["loss"], s["top_kept"]["0.5"]["val"]["loss"]
    assert len(full) == len(top) == 3
    res = runner.invoke(
        app,
        [
            "interpolate",
            str(run / "step_0.safetensors"),
            str(run / "step_20.safetensors"),
            "--task",
            task,
            "--points",
            "3",
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["store"] == str(store) and s["pairs"] == 1
    assert len(s["results"][0]["full"]["train"]["loss"]) == 3
