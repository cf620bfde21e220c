"""A Lightning `Callback` that saves a specdyn checkpoint series during `Trainer.fit()`.

    trainer = L.Trainer(max_steps=2000, callbacks=[SpecdynLightningCallback("runs/lm", log_spaced=30, analyze=True)])
    trainer.fit(module, loader)

Step 0 (the initial weights) is saved when training starts, then the weights after every scheduled optimizer
step (`trainer.global_step`). With `analyze` the summary metrics (core.summaries) go to every logger of the
trainer (`trainer.loggers`: TensorBoard, W&B, CSV, ...) at the step of the checkpoint they describe.
"""

from __future__ import annotations

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

from specdyn.integrations.core import SeriesSaver


class SpecdynLightningCallback(Callback):
    """Save the LightningModule at specdyn's schedule (`log_spaced=N` over max_steps, or `every=K`) into `run_dir`."""

    def __init__(self, run_dir, *, log_spaced=None, every=None, max_steps=None, analyze=False, store=None):
        self.saver = SeriesSaver(run_dir, log_spaced=log_spaced, every=every, max_steps=max_steps, analyze=analyze,
                                 store=store, task="lightning")  # fmt: skip

    def on_train_start(self, trainer, pl_module):
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self.saver.config = {"model": type(pl_module).__name__, "hparams": _hparams(pl_module)}
        self.saver.plan(int(total))
        if trainer.is_global_zero and self.saver.wants(trainer.global_step):
            self.saver.save(trainer.global_step, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero and self.saver.wants(trainer.global_step):
            self.saver.save(trainer.global_step, pl_module)
        self._log(trainer, self.saver.poll())

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.saver.wants(trainer.global_step):
            self.saver.save(trainer.global_step, pl_module)
        self._log(trainer, self.saver.finish())

    @staticmethod
    def _log(trainer, results) -> None:
        for step, metrics in results:
            for logger in trainer.loggers:
                logger.log_metrics(dict(metrics), step=step)
        if results:
            for logger in trainer.loggers:
                logger.save()


def _hparams(module) -> dict:
    import json

    try:
        return json.loads(json.dumps(dict(getattr(module, "hparams", {})), default=str))
    except (TypeError, ValueError):
        return {}
