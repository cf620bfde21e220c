"""`cnn`: a small VGG-style convnet with BatchNorm on synthetic images (docs/method.md 4, the VGG16-BN rows).

Each class is a smooth random colour texture; an example is its class texture, circularly shifted by up to
`max_shift` pixels, scaled in contrast and covered in noise, so translation-invariant conv features pay off.
Parameter names follow open_lth's cifar_vgg (`layers.i.conv`, `layers.i.bn`, `fc`), whose final layer is `fc`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from specdyn.tasks.base import BuiltinTask, TrainConfig, seeded


@dataclasses.dataclass
class Config(TrainConfig):
    image_size: int = 16
    channels: int = 3
    n_classes: int = 10
    widths: tuple[int, ...] = (16, 16, 32, 32, 64, 64)  # conv widths; a 2x2 max-pool follows every second conv
    max_shift: int = 8  # circular shifts up to half the image: the position carries no information
    noise_std: float = 2.5
    n_train: int = 5000
    n_val: int = 1000
    steps: int = 800
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        ins = (c.channels,) + tuple(c.widths[:-1])
        self.layers = nn.ModuleList(ConvBN(i, o) for i, o in zip(ins, c.widths))
        self.fc = nn.Linear(c.widths[-1], c.n_classes)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


class CNNTask(BuiltinTask):
    name = "cnn"
    Config = Config
    has_error = True
    eval_batch_size = 500

    def make_data(self):
        c = self.config
        g = torch.Generator().manual_seed(c.data_seed)
        coarse = torch.randn(c.n_classes, c.channels, 4, 4, generator=g)
        textures = F.interpolate(coarse, size=(c.image_size, c.image_size), mode="bicubic", align_corners=False)
        textures = textures / textures.flatten(1).std(dim=1)[:, None, None, None]
        n = c.n_train + c.n_val
        y = torch.randint(c.n_classes, (n,), generator=g)
        shifts = torch.randint(-c.max_shift, c.max_shift + 1, (n, 2), generator=g)
        contrast = 0.5 + torch.rand(n, generator=g)
        x = torch.stack([torch.roll(textures[k], (int(dy), int(dx)), dims=(1, 2)) for k, (dy, dx) in zip(y, shifts)])
        x = contrast[:, None, None, None] * x + c.noise_std * torch.randn(x.shape, generator=g)
        return {"train": (x[: c.n_train], y[: c.n_train]), "val": (x[c.n_train :], y[c.n_train :])}

    def build_model(self) -> nn.Module:
        with seeded(self.config.seed):
            return VGG(self.config)

    def batch_loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(-1) != y).float()
