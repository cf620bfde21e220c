"""`specdyn train`: checkpoint series on disk, save schedules, formats, determinism, branching and the CLI."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from specdyn.cli import app
from specdyn.errors import EXIT_NOT_FOUND, EXIT_USAGE, SpecdynError
from specdyn.io import CheckpointReader, discover
from specdyn.tasks import make_task
from specdyn.train import Branch, read_source, save_steps, train
from tests.test_tasks import SMALL, small

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def _series(run_dir):
    return sorted(run_dir.glob("step_*.safetensors"))


def _tensors(path):
    return load_file(str(path))


def test_save_steps():
    assert save_steps(0, 100, every=25) == [0, 25, 50, 75, 100]
    assert save_steps(0, 10, every=4) == [0, 4, 8, 10]
    assert save_steps(0, 200) == list(range(0, 201, 10))  # default: 20 saves
    assert save_steps(35, 100, every=20) == [35, 40, 60, 80, 100]  # a branch keeps the trunk's grid
    log = save_steps(0, 1000, log=4)
    assert log == [0, 1, 10, 100, 1000]
    assert save_steps(0, 1000, log=30)[:4] == [0, 1, 2, 3] and len(save_steps(0, 1000, log=30)) <= 31
    assert save_steps(500, 1500, log=2) == [500, 501, 1500]
    with pytest.raises(ValueError):
        save_steps(0, 10, every=2, log=3)


@pytest.mark.parametrize("name", list(SMALL))
def test_each_task_trains_and_writes_a_readable_series(tmp_path, name):
    task = small(name, steps=4)
    result = train(task, tmp_path / name, every=2, show_progress=False)
    files = _series(tmp_path / name)
    assert [f.name for f in files] == ["step_000000.safetensors", "step_000002.safetensors", "step_000004.safetensors"]
    assert result.checkpoints == files
    model_sd = task.build_model().state_dict()
    with safe_open(str(files[-1]), framework="pt") as f:
        meta = f.metadata()
    assert meta["step"] == "4" and meta["task"] == name and meta["format"] == "pt"
    assert json.loads(meta["param_order"]) == list(model_sd)  # parameters and buffers, state_dict order
    assert json.loads(meta["config"])["steps"] == 4
    saved = _tensors(files[-1])
    assert set(saved) == set(model_sd)
    first = _tensors(files[0])
    assert any(not torch.equal(saved[k], first[k]) for k in saved)  # it trained
    run = json.loads((tmp_path / name / "run.json").read_text())
    assert run["task"] == name and run["config"] == json.loads(meta["config"])
    assert [h["step"] for h in run["history"]] == [0, 2, 4]
    keys = {"step", "train_loss", "val_loss"} | ({"train_err", "val_err"} if task.has_error else set())
    assert all(set(h) == keys for h in run["history"])
    if "n_heads" in task.config.__dataclass_fields__:
        assert run["config"]["n_heads"] == task.config.n_heads
    # specdyn's own reader finds the series in order and in registration order
    found = discover(tmp_path / name)
    assert [c.step for c in found] == [0, 2, 4]
    with CheckpointReader(found[-1]) as reader:
        assert reader.names() == list(model_sd)


def test_history_matches_a_fresh_evaluation_of_the_saved_weights(tmp_path):
    task = small("mlp", steps=3)
    train(task, tmp_path, every=3, show_progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    model = task.build_model()
    model.load_state_dict(_tensors(tmp_path / "step_000003.safetensors"))
    fresh = task.evaluate(model, "val")
    assert run["history"][-1]["val_loss"] == pytest.approx(fresh["loss"], rel=1e-6)
    assert run["history"][-1]["val_err"] == pytest.approx(fresh["err"])


def test_cnn_series_keeps_batchnorm_buffers(tmp_path):
    train(small("cnn", steps=2), tmp_path, every=2, show_progress=False)
    first, last = (_tensors(p) for p in _series(tmp_path))
    assert "layers.0.bn.running_mean" in last and "layers.0.bn.num_batches_tracked" in last
    assert not torch.equal(first["layers.0.bn.running_mean"], last["layers.0.bn.running_mean"])
    assert int(last["layers.0.bn.num_batches_tracked"]) == 2


def test_same_seed_same_bits_other_seed_other_weights(tmp_path):
    for run in ("a", "b"):
        train(small("modadd", steps=3), tmp_path / run, every=3, show_progress=False)
    train(small("modadd", steps=3, seed=1), tmp_path / "c", every=3, show_progress=False)
    a, b, c = (_tensors(tmp_path / r / "step_000003.safetensors") for r in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "step_000003.safetensors").read_bytes() == (
        tmp_path / "b" / "step_000003.safetensors"
    ).read_bytes()
    assert (tmp_path / "a" / "run.json").read_text() == (tmp_path / "b" / "run.json").read_text()
    assert not torch.equal(a["decoder.weight"], c["decoder.weight"])


def test_bfloat16_storage(tmp_path):
    task = small("mlp", steps=2)
    train(task, tmp_path / "f32", every=2, show_progress=False)
    train(small("mlp", steps=2), tmp_path / "bf16", every=2, save_dtype="bfloat16", show_progress=False)
    full = _tensors(tmp_path / "f32" / "step_000002.safetensors")
    half = _tensors(tmp_path / "bf16" / "step_000002.safetensors")
    assert half["layers.0.weight"].dtype == torch.bfloat16
    assert torch.equal(half["layers.0.weight"], full["layers.0.weight"].to(torch.bfloat16))


@pytest.mark.parametrize("fmt", ["torch", "lightning-style", "hf-style"])
def test_other_formats_are_readable(tmp_path, fmt):
    task = small("modadd", steps=2)
    train(task, tmp_path / "st", every=1, show_progress=False)
    train(small("modadd", steps=2), tmp_path / fmt, every=1, fmt=fmt, show_progress=False)
    names = {"torch": ["step_000000.pt", "step_000001.pt", "step_000002.pt"],
             "lightning-style": ["epoch=0-step=0.ckpt", "epoch=1-step=1.ckpt", "epoch=2-step=2.ckpt", "last.ckpt"],
             "hf-style": ["checkpoint-0", "checkpoint-1", "checkpoint-2"]}[fmt]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / fmt).iterdir() if p.name != "run.json") == sorted(names)
    if fmt == "torch":
        obj = torch.load(tmp_path / fmt / "step_000002.pt", weights_only=True)
        assert set(obj) == {"state_dict", "step"} and obj["step"] == 2
    if fmt == "lightning-style":
        obj = torch.load(tmp_path / fmt / "epoch=2-step=2.ckpt", weights_only=True)
        assert obj["global_step"] == 2 and obj["epoch"] == 2 and all(k.startswith("model.") for k in obj["state_dict"])
    if fmt == "hf-style":
        folder = tmp_path / fmt / "checkpoint-2"
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 2
        assert json.loads((folder / "config.json").read_text())["num_attention_heads"] == 4
    found = discover(tmp_path / fmt)
    assert [c.step for c in found] == [0, 1, 2]
    reference = _tensors(tmp_path / "st" / "step_000002.safetensors")
    src = read_source(found[-1].path)
    assert src.step == 2 and src.task == "modadd" and src.config["p"] == 11
    assert set(src.state_dict) == set(reference)
    assert all(torch.equal(src.state_dict[k], reference[k]) for k in reference)


def test_refuses_to_mix_runs_and_overwrite_removes_only_run_files(tmp_path):
    train(small("mlp", steps=2), tmp_path, every=1, show_progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SpecdynError, match="--overwrite"):
        train(small("mlp", steps=2), tmp_path, every=1, show_progress=False)
    train(small("mlp", steps=4), tmp_path, every=4, overwrite=True, show_progress=False)
    assert [p.name for p in _series(tmp_path)] == ["step_000000.safetensors", "step_000004.safetensors"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resuming_with_optimizer_state_reproduces_the_trunk_exactly(tmp_path):
    train(small("mlp", steps=6, batch_size=16), tmp_path / "trunk", every=3, save_optimizer=True, show_progress=False)
    trunk_mid = read_source(tmp_path / "trunk" / "step_000003.safetensors")
    assert trunk_mid.optimizer_path is not None
    task = make_task("mlp", **trunk_mid.config)
    train(task, tmp_path / "branch", every=3, branch=Branch(init_from=trunk_mid), show_progress=False)
    a = _tensors(tmp_path / "trunk" / "step_000006.safetensors")
    b = _tensors(tmp_path / "branch" / "step_000006.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = json.loads((tmp_path / "branch" / "run.json").read_text())
    assert run["init_from"]["step"] == 3 and [h["step"] for h in run["history"]] == [3, 6]


def test_branch_with_its_own_seed_starts_at_the_trunk_weights_and_diverges(tmp_path):
    train(small("mlp", steps=6, batch_size=16), tmp_path / "trunk", every=3, show_progress=False)
    src = read_source(tmp_path / "trunk" / "step_000003.safetensors")
    task = make_task("mlp", **{**src.config, "seed": 4})
    train(task, tmp_path / "branch", every=3, branch=Branch(init_from=src), show_progress=False)
    start = _tensors(tmp_path / "branch" / "step_000003.safetensors")
    assert all(torch.equal(start[k], src.state_dict[k]) for k in start)
    a = _tensors(tmp_path / "trunk" / "step_000006.safetensors")
    b = _tensors(tmp_path / "branch" / "step_000006.safetensors")
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])


def test_perturbed_branch_keeps_norms_and_the_final_layer(tmp_path):
    train(small("cnn", steps=2), tmp_path / "trunk", every=2, show_progress=False)
    src = read_source(tmp_path / "trunk" / "step_000002.safetensors")
    task = make_task("cnn", **{**src.config, "steps": 3})
    train(task, tmp_path / "b", every=1, branch=Branch(init_from=src, perturb_scale=1.0), show_progress=False)
    start = _tensors(tmp_path / "b" / "step_000002.safetensors")
    for name in ("layers.0.conv.weight", "layers.3.conv.weight"):
        w, w2 = src.state_dict[name], start[name]
        assert torch.linalg.norm(w2).item() == pytest.approx(torch.linalg.norm(w).item(), rel=1e-5)
        cos = (w * w2).sum() / (w.norm() * w2.norm())
        assert 0.4 < cos < 0.95
    assert torch.equal(start["fc.weight"], src.state_dict["fc.weight"])
    # BatchNorm statistics were re-estimated for the perturbed weights
    assert not torch.equal(start["layers.1.bn.running_var"], src.state_dict["layers.1.bn.running_var"])
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["perturb"] == {"scale": 1.0, "seed": 0}


@pytest.mark.parametrize("mask_type", ["magnitude", "random"])
def test_lottery_branch_holds_its_mask_at_every_checkpoint(tmp_path, mask_type):
    train(small("mlp", steps=4, batch_size=16), tmp_path / "trunk", every=2, show_progress=False)
    rewind = read_source(tmp_path / "trunk" / "step_000002.safetensors")
    final = read_source(tmp_path / "trunk" / "step_000004.safetensors")
    task = make_task("mlp", **{**rewind.config, "steps": 6})
    branch = Branch(init_from=rewind, mask_from=final, density=0.2, mask_type=mask_type)
    train(task, tmp_path / "lt", every=2, branch=branch, show_progress=False)
    masked = ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    n = sum(final.state_dict[k].numel() for k in masked)
    zeros_at_start = None
    for path in _series(tmp_path / "lt"):
        sd = _tensors(path)
        zeros = {k: sd[k] == 0 for k in masked}
        if zeros_at_start is None:
            zeros_at_start = zeros
        assert all(torch.equal(zeros[k], zeros_at_start[k]) for k in masked), path.name
        assert not torch.any(sd["layers.3.weight"] == 0)  # the final layer is never masked
    kept = sum(int((~zeros_at_start[k]).sum()) for k in masked)
    info = json.loads((tmp_path / "lt" / "run.json").read_text())["mask"]
    assert info["kept"] == kept and info["type"] == mask_type
    if mask_type == "magnitude":
        assert kept == int(0.2 * n) - 1
    else:
        assert abs(kept / n - 0.2) < 0.03


def test_a_mask_without_init_from_rewinds_to_the_initialisation(tmp_path):
    train(small("mlp", steps=2), tmp_path / "trunk", every=2, show_progress=False)
    final = read_source(tmp_path / "trunk" / "step_000002.safetensors")
    train(small("mlp", steps=2), tmp_path / "lt", every=2, show_progress=False,
          branch=Branch(mask_from=final, density=0.5))  # fmt: skip
    init = _tensors(tmp_path / "trunk" / "step_000000.safetensors")
    start = _tensors(tmp_path / "lt" / "step_000000.safetensors")
    w, w0 = start["layers.0.weight"], init["layers.0.weight"]
    kept = w != 0
    assert torch.equal(w[kept], w0[kept]) and 0 < kept.float().mean() < 1


def test_branch_past_the_end_is_a_user_error(tmp_path):
    train(small("mlp", steps=2), tmp_path / "trunk", every=2, show_progress=False)
    src = read_source(tmp_path / "trunk" / "step_000002.safetensors")
    with pytest.raises(SpecdynError, match="nothing to train"):
        train(make_task("mlp", **src.config), tmp_path / "b", branch=Branch(init_from=src), show_progress=False)


# --- the command line ----------------------------------------------------------------------------------------


def _sets(name, skip=()):
    out = []
    for k, v in SMALL[name].items():
        if k in skip:
            continue
        out += ["--set", f"{k}={list(v) if isinstance(v, tuple) else v}"]
    return out


def test_cli_trains_and_prints_a_json_summary(tmp_path):
    out = tmp_path / "run"
    args = ["train", "modadd", "-o", str(out), "--max-steps", "2", "--save-every", "1", "--weight-decay", "0",
            "--data-frac", "0.4", "-q", "--json", *_sets("modadd", skip=["data_frac"])]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["checkpoints"] == 3 and summary["final"]["step"] == 2
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["weight_decay"] == 0.0 and run["config"]["data_frac"] == 0.4 and run["config"]["p"] == 11
    # rerunning into the same directory is refused with a one-line error, and nothing is lost
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--overwrite" in res.stderr and len(_series(out)) == 3


def test_cli_branch_from_a_checkpoint(tmp_path):
    trunk = tmp_path / "trunk"
    assert runner.invoke(app, ["train", "mlp", "-o", str(trunk), "--max-steps", "4", "--save-every", "2", "-q",
                               *_sets("mlp")]).exit_code == 0  # fmt: skip
    ckpt = trunk / "step_000002.safetensors"
    res = runner.invoke(app, ["train", "mlp", "-o", str(tmp_path / "b"), "--init-from", str(ckpt), "--seed", "3",
                              "--perturb-scale", "0.5", "--mask-from", str(trunk / "step_000004.safetensors"),
                              "--density", "0.3", "--mask-type", "random", "--save-every", "2", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["config"]["seed"] == 3 and run["config"]["in_dim"] == 8  # the trunk's config, with the branch seed
    assert [h["step"] for h in run["history"]] == [2, 4] and run["mask"]["type"] == "random"
    res = runner.invoke(app, ["train", "modadd", "-o", str(tmp_path / "c"), "--init-from", str(ckpt)])
    assert res.exit_code == 1 and "mlp checkpoint" in res.stderr


def test_cli_show_config(tmp_path):
    res = runner.invoke(app, ["train", "lm", "--show-config", "--set", "d_model=64", "--lr", "0.01"])
    assert res.exit_code == 0
    cfg = json.loads(res.stdout)["config"]
    assert cfg["d_model"] == 64 and cfg["lr"] == 0.01 and cfg["n_heads"] == 4


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["train", "resnet"], EXIT_USAGE, "unknown task"),
        (["train", "mlp", "--set", "widht=3"], EXIT_USAGE, "no config key 'widht'"),
        (["train", "mlp", "--set", "width"], EXIT_USAGE, "KEY=VALUE"),
        (["train", "mlp", "--data-frac", "0.5"], EXIT_USAGE, "data_frac"),
        (["train", "mlp", "--max-steps", "5", "--set", "steps=6"], EXIT_USAGE, "given twice"),
        (["train", "mlp", "--density", "0.1"], EXIT_USAGE, "--mask-from"),
        (["train", "mlp", "--save-every", "2", "--save-log", "3"], EXIT_USAGE, "not both"),
        (["train", "mlp", "--format", "zip"], 2, "zip"),
        (["train", "mlp", "--init-from", "/no/such/step_1.safetensors"], EXIT_NOT_FOUND, "no such file"),
    ],
)
def test_cli_bad_arguments(args, code, message):
    res = runner.invoke(app, args)
    assert res.exit_code == code, res.output
    assert message in res.output
    assert "Traceback" not in res.output
