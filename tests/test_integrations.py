"""The training callbacks with the real libraries on tiny models: a transformers Trainer and a Lightning Trainer
each save a log-spaced specdyn series that analyze reads, and with analyze=True the summary metrics reach a
TensorBoard event file at the checkpoints' steps, equal to what the store holds."""

import json
import time

import numpy as np
import pytest
import torch

from specdyn import open_store
from specdyn.integrations.core import PREFIX, SeriesSaver, schedule, summaries
from specdyn.io.safetensors_file import read_header

MAX_STEPS = 12
LOG_SPACED = 5


def tb_scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under `folder`: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def check_series(run_dir):
    steps = schedule(MAX_STEPS, log_spaced=LOG_SPACED)
    files = sorted(run_dir.glob("step_*.safetensors"))
    assert [int(json.loads(json.dumps(read_header(f)["__metadata__"]["step"]))) for f in files] == steps
    st = open_store(run_dir)
    assert list(st.steps) == steps and len(st.matrices) >= 3
    return st, steps


def check_logged(scalars, st, steps, prefix):
    expect = dict(summaries(st.path))
    assert set(expect) == set(steps)
    alpha = scalars[prefix + PREFIX + "alpha"]
    assert sorted(alpha) == steps
    for step in steps:
        assert alpha[step] == pytest.approx(expect[step][PREFIX + "alpha"], rel=1e-6)
        assert scalars[prefix + PREFIX + "effective_rank"][step] == pytest.approx(
            expect[step][PREFIX + "effective_rank"], rel=1e-6
        )
    assert any(tag.startswith(prefix + PREFIX + "alpha/") for tag in scalars)


def test_schedule_is_dense_early():
    s = schedule(1000, log_spaced=10)
    assert s[0] == 0 and s[-1] == 1000 and s[1] == 1 and np.all(np.diff(s) > 0)
    assert s == sorted({0} | {round(1000 ** (i / 9)) for i in range(10)})  # evenly spread in log(step)
    assert schedule(10, every=4) == [0, 4, 8, 10]


def test_saver_skips_tied_copies(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    saver = SeriesSaver(tmp_path, every=1)
    saver.plan(1)
    path = saver.save(0, Tied())
    assert [k for k in read_header(path) if k != "__metadata__"] == ["emb.weight"]


def test_transformers_trainer_callback(tmp_path, one_thread):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    from specdyn.integrations.hf import SpecdynTrainerCallback

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (64, 16), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=MAX_STEPS, per_device_train_batch_size=4, logging_steps=4,
        report_to=["tensorboard"], save_strategy="no", use_cpu=True, disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    run = tmp_path / "run"
    trainer.add_callback(SpecdynTrainerCallback(run, log_spaced=LOG_SPACED, analyze=True, trainer=trainer))
    trainer.train()
    st, steps = check_series(run)
    check_logged(tb_scalars(tmp_path / "hf"), st, steps, "train/")


def test_lightning_callback(tmp_path, one_thread):
    L = pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    from specdyn.integrations.lightning import SpecdynLightningCallback

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                            torch.nn.ReLU(), torch.nn.Linear(32, 4))  # fmt: skip

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.body(x), y)
            losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    losses = []
    torch.manual_seed(0)
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    run = tmp_path / "run"
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="lit")
    trainer = L.Trainer(max_steps=MAX_STEPS, logger=logger, accelerator="cpu", enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SpecdynLightningCallback(run, log_spaced=LOG_SPACED, analyze=True)])  # fmt: skip
    trainer.fit(Net(), loader)
    st, steps = check_series(run)
    check_logged(tb_scalars(tmp_path / "tb"), st, steps, "")
    from specdyn.io.runmeta import read_run_log

    log = read_run_log([run])  # the training loss of every step, at the step after its update (as the HF Trainer)
    assert list(log.history["step"]) == list(range(1, MAX_STEPS + 1))
    assert list(log.history["train_loss"]) == pytest.approx(losses)


def store_arrays(path) -> dict:
    """Every array of a store by its path in the group tree (zarr read directly, not through SpectralStore)."""
    import zarr

    def walk(group, prefix=""):
        for key, member in group.members():
            if isinstance(member, zarr.Group):
                yield from walk(member, prefix + key + "/")
            else:
                yield prefix + key, member[...]

    return dict(walk(zarr.open_group(str(path), mode="r")))


def test_trainer_callback_series_is_the_checkpoint_series(tmp_path, one_thread):
    """A GPT-2 series saved by the callback gives the store a Trainer `checkpoint-N` series of the same weights
    gives (Conv1D transposed, heads split: 11 pairs), its loss history is the run's training log, and
    prune-eval's hf-causal-lm task builds the model from the config.json beside it."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from typer.testing import CliRunner

    from specdyn.analyze import AnalyzeOptions, analyze
    from specdyn.cli import app
    from specdyn.integrations.hf import SpecdynTrainerCallback
    from specdyn.io.runmeta import read_run_log

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0,
                                     eos_token_id=0)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (32, 16), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=6, per_device_train_batch_size=4, logging_steps=1, report_to=[],
        save_strategy="steps", save_steps=3, save_only_model=True, use_cpu=True, disable_tqdm=True,
        learning_rate=1e-3,
    )  # fmt: skip
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=data)
    run = tmp_path / "run"
    trainer.add_callback(SpecdynTrainerCallback(run, every=3))
    trainer.train()
    assert json.loads((run / "config.json").read_text()) == json.loads(
        (tmp_path / "hf" / "checkpoint-6" / "config.json").read_text()
    )
    opts = AnalyzeOptions(steps="1:")  # the Trainer saves no step 0
    analyze([run], options=opts, show_progress=False)
    analyze([tmp_path / "hf"], options=opts, show_progress=False)
    ours, theirs = store_arrays(run / "specdyn.zarr"), store_arrays(tmp_path / "hf" / "specdyn.zarr")
    assert set(ours) == set(theirs)
    for key in ours:
        if key not in ("checkpoint", "file_bytes", "file_mtime_ns"):  # which file each row was read from
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    st = open_store(run)
    assert list(st.steps) == [3, 6] and len(st.pairs) == 11 and "model definition" in st.attrs["structure"]

    log = read_run_log([run])
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert dict(zip(log.history["step"], log.history["train_loss"], strict=True)) == pytest.approx(losses)

    ids = tmp_path / "ids.npy"
    np.save(ids, torch.randint(0, 64, (128,), generator=g).numpy())
    runner, full = CliRunner(), []
    for series in (run, tmp_path / "hf"):
        result = runner.invoke(app, ["prune-eval", str(series), "--task", "hf-causal-lm", "--data", str(ids),
                                     "--set", "seq_len=16", "--keep", "1", "--json", "-q"])  # fmt: skip
        assert result.exit_code == 0, result.output
        full.append(json.loads(result.stdout)["full"])
    assert full[0] == full[1]


def test_the_background_analyze_never_imports_from_the_working_folder(tmp_path, monkeypatch):
    """A `typer.py` (a dependency's name) in the training script's working folder is not imported by the
    background `python -m specdyn analyze` (issue 17 item 5); specdyn itself is still found."""
    import subprocess

    from specdyn.integrations.core import analyze_command, analyze_env

    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "shadowed"
    (work / "typer.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nraise SystemExit(9)\n")
    (work / "run").mkdir()  # no checkpoints yet: analyze starts, imports everything, and exits 3
    monkeypatch.chdir(work)
    env = analyze_env({k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    done = subprocess.run(analyze_command(work / "run", None), env=env, cwd=work, capture_output=True, timeout=120)
    assert done.returncode == 3 and "no checkpoints" in done.stderr.decode(), done.stderr.decode()[-2000:]
    assert not marker.exists()


def test_metrics_arrive_while_cpu_bound_training_runs(tmp_path):
    """Training on every core: the background analysis gets its share of the CPU (between steps when training
    keeps every core busy, beside it otherwise), so the first checkpoint's metrics reach the logger while
    training still runs; at idle priority they arrived only after the last step."""
    from specdyn.integrations.core import cores

    before = torch.get_num_threads()
    torch.set_num_threads(cores())
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(512, 256)
    saver = SeriesSaver(tmp_path / "run", every=10**6, analyze=True, share=0.5)
    saver.plan(10**6)
    saver.save(0, net)
    got, step, deadline = [], 0, time.monotonic() + 150
    try:
        while not got and time.monotonic() < deadline:  # "training" until the metrics arrive
            step += 1
            loss = net(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            got = saver.poll()
    finally:
        torch.set_num_threads(before)
        saver.finish()
    assert [s for s, _ in got] == [0], f"no metrics after {step} training steps"
    assert np.isfinite(got[0][1][PREFIX + "effective_rank"])


def test_lightning_module_wrapping_a_transformers_model_saves_it_with_its_config(tmp_path, one_thread):
    """A LightningModule holding one transformers model: the series is that model's, under save_pretrained's
    names, with its config.json, so analyze takes the model's own structure (GPT-2: Conv1D, heads, 11 pairs)."""
    L = pytest.importorskip("lightning")
    transformers = pytest.importorskip("transformers")
    from specdyn.integrations.lightning import SpecdynLightningCallback

    class LM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(
                n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0))  # fmt: skip

        def training_step(self, batch, _):
            (ids,) = batch
            return self.lm(input_ids=ids, labels=ids).loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(0, 64, (16, 16))), batch_size=4)
    run = tmp_path / "run"
    trainer = L.Trainer(max_steps=2, logger=False, accelerator="cpu", enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SpecdynLightningCallback(run, every=1)])  # fmt: skip
    module = LM()
    trainer.fit(module, loader)
    assert json.loads((run / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    from specdyn.analyze import analyze

    analyze([run], show_progress=False)
    st = open_store(run)
    assert st.matrices[0] == "transformer.wte.weight" and len(st.pairs) == 11
    assert st.attrs["structure"].startswith("model definition")
    assert st.matrix_spec("transformer.h.0.attn.c_attn.weight").transposed
