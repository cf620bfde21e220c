"""`unet`: a small DDPM noise-prediction UNet on synthetic shape images (docs/method.md 4, the image_generation rows).

The model is the score-network UNet of the paper's code at small width (conv1-4 with time `dense1-4` and
GroupNorm, transposed convs `tconv4`..`tconv1` with `dense5-7`, skip connections, swish), so the analyzer's
UNet conventions (tconv weights transposed before flattening, fixed alignment pairs, final layer `tconv1`)
apply. Images are 1-3 random rectangles and discs on a dark background. The loss is the DDPM epsilon-MSE
with the paper's sigmoid beta schedule; unlike the paper, the evaluation's timesteps and noise are fixed
per example (drawn once from `data_seed`), so the validation loss is deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from specdyn.tasks.base import BuiltinTask, TrainConfig, seeded


@dataclasses.dataclass
class Config(TrainConfig):
    image_size: int = 16
    channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    embed_dim: int = 64
    groups: int = 4
    timesteps: int = 1000
    n_train: int = 4000
    n_val: int = 500
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0


def alphas_cumprod(timesteps: int) -> torch.Tensor:
    """The paper's sigmoid schedule: beta = sigmoid(linspace(-6, 6)) * (5e-3 - 1e-5) + 1e-5."""
    betas = torch.sigmoid(torch.linspace(-6, 6, timesteps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, 0).float()


class FourierTime(nn.Module):
    """Random Fourier features of t in [0, 1]; `W` is a fixed 1-D parameter (excluded from the matrix set)."""

    def __init__(self, dim: int, scale: float = 30.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(dim // 2) * scale, requires_grad=False)

    def forward(self, t):
        proj = t[:, None] * self.W[None] * 2 * math.pi
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class UNet(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        c1, c2, c3, c4 = c.channels
        e, g = c.embed_dim, c.groups
        self.time_embed = nn.Sequential(FourierTime(e), nn.Linear(e, e))
        self.conv1 = nn.Conv2d(1, c1, 3, stride=1, padding=1, bias=False)
        self.dense1 = nn.Linear(e, c1)
        self.gnorm1 = nn.GroupNorm(g, c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.dense2 = nn.Linear(e, c2)
        self.gnorm2 = nn.GroupNorm(g, c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.dense3 = nn.Linear(e, c3)
        self.gnorm3 = nn.GroupNorm(g, c3)
        self.conv4 = nn.Conv2d(c3, c4, 3, stride=2, padding=1, bias=False)
        self.dense4 = nn.Linear(e, c4)
        self.gnorm4 = nn.GroupNorm(g, c4)
        up = dict(kernel_size=3, stride=2, padding=1, output_padding=1, bias=False)
        self.tconv4 = nn.ConvTranspose2d(c4, c3, **up)
        self.dense5 = nn.Linear(e, c3)
        self.tgnorm4 = nn.GroupNorm(g, c3)
        self.tconv3 = nn.ConvTranspose2d(2 * c3, c2, **up)
        self.dense6 = nn.Linear(e, c2)
        self.tgnorm3 = nn.GroupNorm(g, c2)
        self.tconv2 = nn.ConvTranspose2d(2 * c2, c1, **up)
        self.dense7 = nn.Linear(e, c1)
        self.tgnorm2 = nn.GroupNorm(g, c1)
        self.tconv1 = nn.ConvTranspose2d(2 * c1, 1, 3, stride=1, padding=1)

    def forward(self, x, t):
        """Predicted noise for noisy images x (B, 1, H, W) at continuous times t (B,) in [0, 1]."""
        emb = F.silu(self.time_embed(t))
        h1 = F.silu(self.gnorm1(self.conv1(x) + self.dense1(emb)[..., None, None]))
        h2 = F.silu(self.gnorm2(self.conv2(h1) + self.dense2(emb)[..., None, None]))
        h3 = F.silu(self.gnorm3(self.conv3(h2) + self.dense3(emb)[..., None, None]))
        h4 = F.silu(self.gnorm4(self.conv4(h3) + self.dense4(emb)[..., None, None]))
        h = F.silu(self.tgnorm4(self.tconv4(h4) + self.dense5(emb)[..., None, None]))
        h = F.silu(self.tgnorm3(self.tconv3(torch.cat([h, h3], 1)) + self.dense6(emb)[..., None, None]))
        h = F.silu(self.tgnorm2(self.tconv2(torch.cat([h, h2], 1)) + self.dense7(emb)[..., None, None]))
        return self.tconv1(torch.cat([h, h1], 1))


def shape_images(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """n images (n, 1, size, size) in [-1, 1]: 1-3 rectangles or discs of random grey levels each."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.zeros(n, size, size)
    n_shapes = torch.randint(1, 4, (n,), generator=g)
    for k in range(3):
        cx, cy = torch.randint(0, size, (2, n), generator=g)
        half = torch.randint(2, size // 3 + 1, (2, n), generator=g)
        level = 0.3 + 0.7 * torch.rand(n, generator=g)
        disc = torch.rand(n, generator=g) < 0.5
        dx = xx[None] - cx[:, None, None]
        dy = yy[None] - cy[:, None, None]
        in_rect = (dx.abs() <= half[0][:, None, None]) & (dy.abs() <= half[1][:, None, None])
        in_disc = dx**2 + dy**2 <= (half[0] ** 2)[:, None, None]
        mask = torch.where(disc[:, None, None], in_disc, in_rect) & (k < n_shapes)[:, None, None]
        img = torch.where(mask, level[:, None, None], img)
    return (2 * img - 1)[:, None]


class UNetTask(BuiltinTask):
    name = "unet"
    Config = Config
    has_error = False
    eval_batch_size = 250
    eval_train_subset = 1000

    def __init__(self, config=None):
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod(self.config.timesteps)

    def _noised(self, x, g):
        t = torch.randint(self.config.timesteps, (len(x),), generator=g)
        return x, t, torch.randn(x.shape, generator=g)

    def make_data(self):
        c = self.config
        g = torch.Generator().manual_seed(c.data_seed)
        x = shape_images(c.n_train + c.n_val, c.image_size, g)
        # Fixed evaluation timesteps and noise per example: a deterministic validation loss.
        return {"train": self._noised(x[: c.n_train], g), "val": self._noised(x[c.n_train :], g)}

    def train_batches(self, epoch: int):
        """Shuffled clean images with fresh timesteps and noise, all drawn from seed + 1 + epoch."""
        c = self.config
        x = self.data("train")[0]
        g = torch.Generator().manual_seed(c.seed + 1 + epoch)
        order = torch.randperm(len(x), generator=g)
        b = min(c.batch_size or len(x), len(x))
        return [self._noised(x[order[i : i + b]], g) for i in range(0, len(x) - b + 1, b)]

    def build_model(self) -> nn.Module:
        with seeded(self.config.seed):
            return UNet(self.config)

    def batch_loss(self, model, batch):
        """Per-image mean squared error of the predicted noise."""
        x0, t, noise = batch
        a = self.alphas_cumprod[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(xt, t.float() / self.config.timesteps)
        return (pred - noise).pow(2).flatten(1).mean(1), None
