"""A transformers `TrainerCallback` that saves a specdyn checkpoint series during `Trainer.train()`.

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    trainer.add_callback(SpecdynTrainerCallback("runs/lm", log_spaced=30, analyze=True, trainer=trainer))

Step 0 (the initial weights) is saved when training begins, then every scheduled optimizer step. The run folder
also gets the model's `config.json` (as `save_pretrained` writes it; each checkpoint records the same config, so
`analyze` takes order, orientation, heads and pairs from the model's definition, and `prune-eval --task
hf-causal-lm` builds the model from it) and the Trainer's `trainer_state.json` (its loss history, which the plots
draw). With `analyze` the summary metrics (core.summaries) go to every logger the Trainer reports to
(TensorBoard, W&B, CSV, ...) through `trainer.log`, at the step of the checkpoint they describe (TensorBoard shows
them as `train/specdyn/...`, since the Trainer prefixes training logs with `train/`).
"""

from __future__ import annotations

import dataclasses
import time

from transformers import TrainerCallback

from specdyn.integrations.core import SHARE, SeriesSaver, model_config

STATE_EVERY = 30.0  # seconds between rewrites of trainer_state.json on log events (saves and the end always write)


class SpecdynTrainerCallback(TrainerCallback):
    """Save the model at specdyn's schedule (`log_spaced=N` over max_steps, or `every=K`) into `run_dir`;
    `analyze_share`: the share of training's time the analysis may take while training keeps every core busy
    (core.SHARE)."""

    def __init__(
        self, run_dir, *, log_spaced=None, every=None, max_steps=None, analyze=False, store=None, trainer=None,
        analyze_share=SHARE,
    ):  # fmt: skip
        self.saver = SeriesSaver(run_dir, log_spaced=log_spaced, every=every, max_steps=max_steps, analyze=analyze,
                                 store=store, task="transformers", share=analyze_share)  # fmt: skip
        self.trainer = trainer
        self._state_written = float("-inf")
        if analyze and trainer is None:
            raise ValueError("analyze=True logs through the Trainer: pass trainer=trainer")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.saver.config = model_config(model) or {"model": type(model).__name__}
        self.saver.plan(state.max_steps)
        if state.is_world_process_zero:
            if "model_type" in self.saver.config:
                self.saver.write_json("config.json", self.saver.config)
            if self.saver.wants(state.global_step):
                self.saver.save(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.saver.wants(state.global_step):
            self.saver.save(state.global_step, model)
            self._write_state(state)
        self._log(state, self.saver.poll())

    def on_log(self, args, state, control, **kwargs):
        # at most every STATE_EVERY seconds: the log grows with the run, and rewriting it at every step of a
        # long run with logging_steps=1 would cost quadratic time
        if state.is_world_process_zero and time.monotonic() - self._state_written >= STATE_EVERY:
            self._write_state(state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            if self.saver.wants(state.global_step):
                self.saver.save(state.global_step, model)
            self._write_state(state)
        self._log(state, self.saver.finish())

    def _write_state(self, state) -> None:
        """The Trainer's state as `trainer_state.json` in the run folder: its `log_history` is the loss curve."""
        self.saver.write_json("trainer_state.json", dataclasses.asdict(state))
        self._state_written = time.monotonic()

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
