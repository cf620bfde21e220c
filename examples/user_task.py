"""A minimal user task for specdyn's model-based evaluations (prune-eval, interpolate).

A task is any object with `name`, `build_model()`, `batches(split)` and `evaluate(model, split)`; an optional
`recalibrate(model)` re-estimates normalization statistics after specdyn edits the weights (without it, specdyn
re-estimates BatchNorm statistics over `batches("train")`). See specdyn.tasks.base.Task.

Try it (trains a 20-second series, then evaluates it with this file as the task):

    python examples/user_task.py runs/blobs
    specdyn analyze runs/blobs
    specdyn prune-eval runs/blobs --task examples/user_task.py:task
    specdyn interpolate runs/blobs/step_0.safetensors runs/blobs/step_300.safetensors --task examples/user_task.py:task
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class Blobs:
    """Three Gaussian blobs in 8 dimensions, classified by a small MLP with BatchNorm."""

    name = "blobs"

    def __init__(self, seed: int = 0, n_train: int = 384, n_val: int = 128, batch_size: int = 128):
        g = torch.Generator().manual_seed(seed)
        centers = 2.0 * torch.randn(3, 8, generator=g)
        y = torch.randint(3, (n_train + n_val,), generator=g)
        x = centers[y] + torch.randn(n_train + n_val, 8, generator=g)
        self.data = {"train": (x[:n_train], y[:n_train]), "val": (x[n_train:], y[n_train:])}
        self.batch_size = batch_size

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(
            devices=[]
        ):  # the same initial weights every call, without touching the caller's RNG
            torch.manual_seed(0)
            return nn.Sequential(
                nn.Linear(8, 32),
                nn.BatchNorm1d(32),
                nn.ReLU(),
                nn.Linear(32, 32),
                nn.ReLU(),
                nn.Linear(32, 3),
            )

    def batches(self, split: str):
        """Fixed batches in a fixed order; each batch's first element is the model input."""
        x, y = self.data[split]
        return [(x[i : i + self.batch_size], y[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict:
        was_training = model.training
        model.eval()
        n, loss, err = 0, 0.0, 0.0
        for x, y in self.batches(split):
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            err += (logits.argmax(-1) != y).sum().item()
            n += len(y)
        model.train(was_training)
        return {"loss": loss / n, "err": err / n}


task = Blobs()


def train(out_dir, steps: int = 300, save_every: int = 50, seed: int = 0, init=None) -> list[Path]:
    """Train the task's model with SGD and save `step_<n>.safetensors` files (plain weights, no specdyn metadata).

    `init` (a state dict) starts from given weights, e.g. a trunk checkpoint, to make branches for interpolation.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = task.build_model()
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = task.data["train"]
    g = torch.Generator().manual_seed(seed)
    paths = []
    for step in range(steps + 1):
        if step % save_every == 0:
            path = out / f"step_{step}.safetensors"
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            # param_order keeps the registration order, which safetensors (sorted by name) loses
            save_file(state, str(path), metadata={"step": str(step), "param_order": json.dumps(list(state))})
            paths.append(path)
        if step == steps:
            break
        idx = torch.randint(len(x), (64,), generator=g)
        model.train()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/user_task.py OUT_DIR")
    for p in train(sys.argv[1]):
        print(p)
