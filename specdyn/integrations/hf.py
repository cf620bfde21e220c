"""A transformers `TrainerCallback` that saves a specdyn checkpoint series during `Trainer.train()`.

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    trainer.add_callback(SpecdynTrainerCallback("runs/lm", log_spaced=30, analyze=True, trainer=trainer))

Step 0 (the initial weights) is saved when training begins, then every scheduled optimizer step. With `analyze`
the summary metrics (core.summaries) go to every logger the Trainer reports to (TensorBoard, W&B, CSV, ...)
through `trainer.log`, at the step of the checkpoint they describe (TensorBoard shows them as
`train/specdyn/...`, since the Trainer prefixes training logs with `train/`).
"""

from __future__ import annotations

from transformers import TrainerCallback

from specdyn.integrations.core import SeriesSaver


class SpecdynTrainerCallback(TrainerCallback):
    """Save the model at specdyn's schedule (`log_spaced=N` over max_steps, or `every=K`) into `run_dir`."""

    def __init__(
        self, run_dir, *, log_spaced=None, every=None, max_steps=None, analyze=False, store=None, trainer=None
    ):
        self.saver = SeriesSaver(run_dir, log_spaced=log_spaced, every=every, max_steps=max_steps, analyze=analyze,
                                 store=store, task="transformers")  # fmt: skip
        self.trainer = trainer
        if analyze and trainer is None:
            raise ValueError("analyze=True logs through the Trainer: pass trainer=trainer")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.saver.config = {"model": type(model).__name__, "config": _config_dict(model)}
        self.saver.plan(state.max_steps)
        if state.is_world_process_zero and self.saver.wants(state.global_step):
            self.saver.save(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.saver.wants(state.global_step):
            self.saver.save(state.global_step, model)
        self._log(state, self.saver.poll())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.saver.wants(state.global_step):
            self.saver.save(state.global_step, model)
        self._log(state, self.saver.finish())

    def _log(self, state, results) -> None:
        if not results or self.trainer is None:
            return
        now = state.global_step
        try:
            for step, metrics in results:
                state.global_step = step  # loggers take the step from the state: log at the checkpoint's step
                self.trainer.log(dict(metrics))
        finally:
            state.global_step = now


def _config_dict(model) -> dict:
    cfg = getattr(model, "config", None)
    try:
        return cfg.to_dict() if cfg is not None else {}
    except Exception:  # a config that does not serialise is metadata we can do without
        return {}
