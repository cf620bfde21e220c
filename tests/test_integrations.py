"""The training callbacks with the real libraries on tiny models: a transformers Trainer and a Lightning Trainer
each save a log-spaced specdyn series that analyze reads, and with analyze=True the summary metrics reach a
TensorBoard event file at the checkpoints' steps, equal to what the store holds."""

import json

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
            return torch.nn.functional.cross_entropy(self.body(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

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
