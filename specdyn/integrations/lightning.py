"""A Lightning `Callback` that saves a specdyn checkpoint series during `Trainer.fit()`.

    trainer = L.Trainer(max_steps=2000, callbacks=[SpecdynLightningCallback("runs/lm", log_spaced=30, analyze=True)])
    trainer.fit(module, loader)

Step 0 (the initial weights) is saved when training starts, then the weights after every scheduled optimizer
step (`trainer.global_step`). Each checkpoint records the module's class and hyperparameters, and the
registration order of its parameters (`param_order`); a module that wraps one transformers model (holding all
its parameters) is saved as that model, under its own names, with its config.json beside the series and in
every checkpoint, as the transformers callback does. The run folder gets `metrics.csv`, the
training loss of every step (what `training_step` returned) and the validation loss where there is one, which
the plots draw. With `analyze` the summary metrics (core.summaries) go to every logger of the trainer
(`trainer.loggers`: TensorBoard, W&B, CSV, ...) at the step of the checkpoint they describe.
"""

from __future__ import annotations

import sys

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

from specdyn.integrations.core import SHARE, SeriesSaver, model_config

LOG = "metrics.csv"


class SpecdynLightningCallback(Callback):
    """Save the LightningModule at specdyn's schedule (`log_spaced=N` over max_steps, or `every=K`) into `run_dir`;
    `analyze_share`: the share of training's time the analysis may take while training keeps every core busy
    (core.SHARE)."""

    def __init__(self, run_dir, *, log_spaced=None, every=None, max_steps=None, analyze=False, store=None,
                 analyze_share=SHARE):  # fmt: skip
        self.saver = SeriesSaver(run_dir, log_spaced=log_spaced, every=every, max_steps=max_steps, analyze=analyze,
                                 store=store, task="lightning", share=analyze_share)  # fmt: skip
        self._losses: dict[int, object] = {}  # step -> the loss tensor (read at write time: no sync per step)
        self._val: dict[int, float] = {}

    def on_train_start(self, trainer, pl_module):
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self._module = saved_module(pl_module)
        config = model_config(self._module) if self._module is not pl_module else {}
        self.saver.config = config or {"model": type(pl_module).__name__, "hparams": _hparams(pl_module)}
        self.saver.plan(int(total))
        if trainer.is_global_zero:
            if "model_type" in config:
                self.saver.write_json("config.json", config)
            if self.saver.wants(trainer.global_step):
                self.saver.save(trainer.global_step, self._module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if hasattr(loss, "detach"):
            self._losses[trainer.global_step] = loss.detach()
        if trainer.is_global_zero and self.saver.wants(trainer.global_step):
            self.saver.save(trainer.global_step, self._module)
            self._write_log()
        self._log(trainer, self.saver.poll())

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val_loss")
        if value is not None and not trainer.sanity_checking:
            self._val[trainer.global_step] = float(value)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            if self.saver.wants(trainer.global_step):
                self.saver.save(trainer.global_step, self._module)
            self._write_log()
        self._log(trainer, self.saver.finish())

    def _write_log(self) -> None:
        """metrics.csv in the run folder, in the CSVLogger's layout: step, train_loss, val_loss."""
        for step, loss in list(self._losses.items()):
            if not isinstance(loss, float):
                self._losses[step] = float(loss)
        steps = sorted(set(self._losses) | set(self._val))
        rows = ["step,train_loss,val_loss"] + [
            f"{s},{_cell(self._losses.get(s))},{_cell(self._val.get(s))}" for s in steps
        ]
        self.saver.write_text(LOG, "\n".join(rows) + "\n")

    @staticmethod
    def _log(trainer, results) -> None:
        for step, metrics in results:
            for logger in trainer.loggers:
                logger.log_metrics(dict(metrics), step=step)
        if results:
            for logger in trainer.loggers:
                logger.save()


def saved_module(pl_module):
    """The module whose weights are saved: a transformers model that holds every parameter of the LightningModule
    (saved under the names `save_pretrained` gives them, with its config.json), else the LightningModule."""
    transformers = sys.modules.get("transformers")  # a transformers model implies transformers is imported
    params = {id(p) for p in pl_module.parameters()}
    for child in pl_module.children() if transformers is not None and params else ():
        if isinstance(child, transformers.PreTrainedModel) and {id(p) for p in child.parameters()} == params:
            return child
    return pl_module


def _cell(value) -> str:
    return "" if value is None else repr(float(value))


def _hparams(module) -> dict:
    import json

    try:
        return json.loads(json.dumps(dict(getattr(module, "hparams", {})), default=str))
    except (TypeError, ValueError):
        return {}
