"""`mlp`: an MLP classifier on synthetic clustered data, with `random_labels` for memorisation (docs/method.md 4).

The paper's "rethinking generalization" MLP (3072-256-256-256-10, SGD with momentum) on CIFAR-10; here the
inputs are a Gaussian mixture whose classes are each a union of several clusters (learnable, not linearly
separable). Like natural images, the data has low intrinsic dimension: the cluster centres lie in a random
`signal_dim`-dimensional subspace and isotropic noise fills all `in_dim` dimensions, so true labels can be
learned from a few input directions while memorising random labels needs all of them. `random_labels`
permutes every target before the split, as the paper does.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from specdyn.tasks.base import BuiltinTask, TrainConfig, seeded


@dataclasses.dataclass
class Config(TrainConfig):
    in_dim: int = 64
    width: int = 128
    n_hidden: int = 3  # hidden layers; the model has n_hidden + 1 weight matrices
    n_classes: int = 10
    clusters_per_class: int = 4
    signal_dim: int = 8  # the cluster centres ~ N(0, I) live in a random subspace of this dimension
    noise_std: float = 0.5  # isotropic noise per input dimension
    n_train: int = 4000
    n_val: int = 1000
    random_labels: bool = False
    label_seed: int = 12345  # the permutation of targets under random_labels (the paper's seed)
    steps: int = 6000
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 0.0


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        dims = [c.in_dim] + [c.width] * c.n_hidden + [c.n_classes]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MLPTask(BuiltinTask):
    name = "mlp"
    Config = Config
    has_error = True

    def make_data(self):
        c = self.config
        g = torch.Generator().manual_seed(c.data_seed)
        n_clusters = c.n_classes * c.clusters_per_class
        basis = torch.linalg.qr(torch.randn(c.in_dim, c.signal_dim, generator=g))[0]  # orthonormal columns
        centres = torch.randn(n_clusters, c.signal_dim, generator=g) @ basis.T
        n = c.n_train + c.n_val
        cluster = torch.randint(n_clusters, (n,), generator=g)
        x = centres[cluster] + c.noise_std * torch.randn(n, c.in_dim, generator=g)
        y = cluster % c.n_classes
        if c.random_labels:
            y = y[torch.randperm(n, generator=torch.Generator().manual_seed(c.label_seed))]
        return {"train": (x[: c.n_train], y[: c.n_train]), "val": (x[c.n_train :], y[c.n_train :])}

    def build_model(self) -> nn.Module:
        with seeded(self.config.seed):
            return MLP(self.config)

    def batch_loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(-1) != y).float()
