"""Tiny user tasks and checkpoint series for the evaluation tests (prune-eval, interpolate, lottery, task loading).

Each task follows the Task protocol of specdyn.tasks.base: name, build_model(), batches(split), evaluate(model,
split). Models are small enough that every evaluation takes milliseconds.
"""

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


class MLP(nn.Module):
    def __init__(self, bn: bool):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.bn = nn.BatchNorm1d(12) if bn else nn.Identity()
        self.fc2 = nn.Linear(12, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.bn(self.fc1(x))))))


class ConvNet(nn.Module):
    """A conv and a transposed conv (named so that nothing in the name says `tconv`), then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.up = nn.ConvTranspose2d(5, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.conv(x)))).flatten(1))


class TinyTask:
    """Random inputs with labels from a fixed random teacher; batches of 32; loss and error."""

    def __init__(self, kind: str = "mlp", n_train: int = 96, n_val: int = 64):
        self.kind = kind
        self.name = f"tiny-{kind}"
        g = torch.Generator().manual_seed(123)
        shape = (6,) if kind in ("mlp", "mlp-bn") else (2, 4, 4)
        x = torch.randn(n_train + n_val, *shape, generator=g)
        teacher = torch.randn(x[0].numel(), 3, generator=g)
        y = (x.flatten(1) @ teacher).argmax(-1)
        self.data = {"train": (x[:n_train], y[:n_train]), "val": (x[n_train:], y[n_train:])}

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if self.kind == "conv":
                return ConvNet()
            return MLP(bn=self.kind == "mlp-bn")

    def batches(self, split: str):
        x, y = self.data[split]
        return [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        model.eval()
        n, loss, err = 0, 0.0, 0.0
        for x, y in self.batches(split):
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            err += (out.argmax(-1) != y).sum().item()
            n += len(y)
        return {"loss": loss / n, "err": err / n}


mlp_task = TinyTask("mlp")
bn_task = TinyTask("mlp-bn")
conv_task = TinyTask("conv")
TASK_FILE = str(Path(__file__).resolve())


def spec(name: str) -> str:
    """The `--task path/file.py:object` string of one of this file's tasks."""
    return f"{TASK_FILE}:{name}"


def write_series(run_dir: Path, task: TinyTask, steps=(0, 10, 20, 30), seed: int = 0, metadata: dict | None = None):
    """Checkpoints whose weights drift from step to step (and BatchNorm statistics that are not the defaults);
    returns {step: state_dict}."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = task.build_model()
    g = torch.Generator().manual_seed(seed)
    states = {}
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9).add_(0.3 * torch.randn(p.shape, generator=g))
            for name, b in model.named_buffers():
                if b.is_floating_point():
                    b.copy_(torch.rand(b.shape, generator=g) + (0.5 if "var" in name else -0.5))
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        meta = {"step": str(step), "param_order": json.dumps(list(sd)), **(metadata or {})}
        save_file(sd, str(run_dir / f"step_{step}.safetensors"), metadata=meta)
        states[step] = sd
    return states


def analyzed(run_dir: Path, top: int = 64):
    """Analyze a series into its default store; returns the store path."""
    from specdyn.analyze import AnalyzeOptions, analyze

    summary = analyze([Path(run_dir)], None, AnalyzeOptions(topk=top), show_progress=False)
    return Path(summary["store"])


def evaluate_state(task: TinyTask, state: dict) -> dict:
    """Independent reference: a fresh model with exactly these weights, evaluated on both splits."""
    model = task.build_model()
    model.load_state_dict(state)
    return {split: task.evaluate(model, split) for split in ("train", "val")}
