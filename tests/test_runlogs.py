"""Training logs other libraries write, read by the one reader plots and the report use (specdyn.io.runmeta).
Each log is written by its own library (Lightning's CSVLogger, TensorBoard's SummaryWriter) or in the exact
shape HF Trainer writes (trainer_state.json, checked against a real Trainer run in test_hub.py)."""

import json

import numpy as np
import pytest

from specdyn.io.runmeta import read_run_log


def curve(log, key):
    s, v = log.history["step"], log.history[key]
    keep = np.isfinite(v)
    return dict(zip(s[keep].astype(int).tolist(), v[keep].tolist()))


def test_trainer_state_from_the_last_checkpoint_without_the_closing_mean(tmp_path):
    run = tmp_path / "run"
    history = [{"loss": 3.0, "learning_rate": 1e-3, "step": 5}, {"eval_loss": 2.9, "step": 5},
               {"loss": 2.5, "learning_rate": 5e-4, "step": 10}, {"eval_loss": 2.4, "step": 10}]  # fmt: skip
    for step, upto in ((5, 2), (10, 4)):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        doc = {"global_step": step, "log_history": history[:upto]}
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(doc))
    final = history + [{"train_runtime": 1.0, "train_loss": 2.75, "step": 10}]  # the mean over training
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": final}))
    ckpts = [run / "checkpoint-5", run / "checkpoint-10"]
    log = read_run_log([run], ckpts)
    assert curve(log, "train_loss") == {5: 3.0, 10: 2.5}
    assert curve(log, "val_loss") == {5: 2.9, 10: 2.4}
    assert curve(log, "learning_rate") == {5: 1e-3, 10: 5e-4}
    assert log.names["val_loss"] == "eval_loss" and log.sources == [str(run / "checkpoint-10" / "trainer_state.json")]
    # without checkpoint folders: the run dir's own trainer_state.json, still without the closing record
    log = read_run_log([run], [])
    assert curve(log, "train_loss") == {5: 3.0, 10: 2.5}


def test_lightning_csv_logger_metrics(tmp_path):
    pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="lightning_logs")
    for step in range(0, 30, 10):
        logger.log_metrics({"train_loss_step": 3.0 - step / 10, "epoch": 0}, step=step)
        logger.log_metrics({"val_loss": 2.5 - step / 10, "val_acc": 0.5}, step=step)
    logger.save()
    run = tmp_path  # checkpoints would be in lightning_logs/version_0/checkpoints
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()
    for where in (run, tmp_path / "lightning_logs" / "version_0" / "checkpoints"):
        where.mkdir(parents=True, exist_ok=True)
        log = read_run_log([where], [])
        assert curve(log, "train_loss") == pytest.approx({0: 3.0, 10: 2.0, 20: 1.0})
        assert curve(log, "val_loss") == pytest.approx({0: 2.5, 10: 1.5, 20: 0.5})
        assert log.names == {"train_loss": "train_loss_step", "val_loss": "val_loss"}


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "runs" / "Dec01_08-00-00_host")  # where HF Trainer's callback writes
    for step in (4, 8, 12):
        writer.add_scalar("train/loss", 4.0 / step, step)
        writer.add_scalar("eval/loss", 5.0 / step, step)
        writer.add_scalar("train/learning_rate", 0.1, step)
    writer.close()
    log = read_run_log([tmp_path], [])
    assert curve(log, "train_loss") == pytest.approx({4: 1.0, 8: 0.5, 12: 4.0 / 12})
    assert curve(log, "val_loss") == pytest.approx({4: 1.25, 8: 0.625, 12: 5.0 / 12})
    assert log.names["train_loss"] == "train/loss" and log.names["learning_rate"] == "train/learning_rate"


def test_specdyns_own_run_json_comes_first(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"task": "mlp", "history": [{"step": 1, "train_loss": 9.0}]}))
    (tmp_path / "trainer_state.json").write_text(
        json.dumps({"log_history": [{"loss": 1.0, "step": 1}, {"eval_loss": 2.0, "step": 1}]})
    )
    log = read_run_log([tmp_path], [])
    assert curve(log, "train_loss") == {1: 9.0}  # run.json's curve; the Trainer's loss is not mixed in
    assert curve(log, "val_loss") == {1: 2.0}  # a curve run.json lacks comes from the next log
    assert "train_loss" not in log.names and log.names["val_loss"] == "eval_loss" and log.task == "mlp"


def test_an_unreadable_log_is_a_warning(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable training log"):
        log = read_run_log([tmp_path], [])
    assert not log.history
