"""Training-loop callbacks that save a checkpoint series with specdyn's schedule and, optionally, analyze it as
training runs: `hf.SpecdynTrainerCallback` (transformers), `lightning.SpecdynLightningCallback` (Lightning). The
shared machinery (schedule, saving, the background analysis) is `core.SeriesSaver`.

Imported lazily: `import specdyn.integrations` does not import transformers or lightning."""

import importlib

_API = {
    "SeriesSaver": "specdyn.integrations.core",
    "SpecdynTrainerCallback": "specdyn.integrations.hf",
    "SpecdynLightningCallback": "specdyn.integrations.lightning",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'specdyn.integrations' has no attribute {name!r}")


__all__ = list(_API)
