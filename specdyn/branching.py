"""Branch edits of docs/method.md 3, as pure functions of tensors: the norm-preserving random perturbation and
lottery-ticket masks (global magnitude, and random with the same per-layer densities).

"Matrices" are the parameters with ndim >= 2 in registration order (`matrix_names`); the last one is the
"final layer", which the perturbation and the masks leave alone (callers pass `branch_names`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn


def matrix_names(model: nn.Module) -> list[str]:
    """Every parameter with ndim >= 2, in registration order (docs/method.md 0 `param_keys`)."""
    return [n for n, p in model.named_parameters() if p.ndim >= 2]


def branch_names(model: nn.Module) -> list[str]:
    """The matrices a perturbation or a mask touches: all but the final layer."""
    return matrix_names(model)[:-1]


def _tensors(state_dict_or_model: Mapping[str, torch.Tensor] | nn.Module) -> Mapping[str, torch.Tensor]:
    if isinstance(state_dict_or_model, nn.Module):
        return dict(state_dict_or_model.named_parameters())
    return state_dict_or_model


@torch.no_grad()
def perturb_(
    state_dict_or_params: Mapping[str, torch.Tensor] | nn.Module,
    names: list[str],
    scale: float,
    generator: torch.Generator,
) -> None:
    """Perturb each named matrix in place, keeping its Frobenius norm (docs/method.md 3, `ModelPerturber`).

    For each W in `names` order: G ~ N(0, 1) of W's shape from `generator` (one generator, seeded with the
    branch seed, drawn on CPU), W1 = W + scale * ||W||_F * G / ||G||_F, W <- ||W||_F * W1 / ||W1||_F.
    So cos(W, W') ~ 1 / sqrt(1 + scale^2) for large W. The perturbation is isotropic, so conv kernels need
    no flattening and transposed convs no transposing. Computed in float64, written back in W's dtype.
    """
    tensors = _tensors(state_dict_or_params)
    for name in names:
        w = tensors[name]
        w64 = w.detach().to(torch.float64)
        g = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(torch.float64)
        norm = torch.linalg.vector_norm(w64)
        w1 = w64 + scale * norm * g / torch.linalg.vector_norm(g)
        w1 = w1 * (norm / torch.linalg.vector_norm(w1))
        w.copy_(w1.to(w.dtype))


def global_magnitude_mask(
    tensors: Mapping[str, torch.Tensor], density: float, exclude_last: bool = True
) -> dict[str, torch.Tensor]:
    """Lottery-ticket masks with one global magnitude threshold (docs/method.md 2, `get_masks`).

    Pools |w| over every ndim >= 2 tensor (all but the last one, unless `exclude_last=False`; pass
    registration order), sorts ascending, thr = sorted[-int(density * N)] and keeps |w| > thr. That keeps
    int(density * N) - 1 weights when magnitudes are distinct (fewer with ties at the threshold), as the
    paper's code does. Unlike the paper (whose index -0 then keeps nearly everything), int(density * N) == 0
    keeps nothing. Returns {name: bool mask} for the masked tensors.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    names = [n for n, t in tensors.items() if t.ndim >= 2]
    if exclude_last:
        names = names[:-1]
    if not names:
        raise ValueError("no matrices to mask (the only matrix is the excluded final layer)")
    magnitudes = {n: tensors[n].detach().abs().to(torch.float32) for n in names}
    pooled = torch.cat([m.flatten() for m in magnitudes.values()])
    k = int(density * pooled.numel())
    if k == 0:
        return {n: torch.zeros_like(m, dtype=torch.bool) for n, m in magnitudes.items()}
    # sorted ascending, element -k == the k-th largest value.
    thr = torch.kthvalue(pooled, pooled.numel() - k + 1).values
    return {n: m > thr for n, m in magnitudes.items()}


def random_mask_like(masks: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-layer Bernoulli masks with each layer's density in `masks` (docs/method.md 2, mask type `random`)."""
    out = {}
    for name, mask in masks.items():
        q = mask.float().mean().item()
        out[name] = torch.rand(mask.shape, generator=generator) < q
    return out


def mask_density(masks: Mapping[str, torch.Tensor]) -> float:
    """The fraction of weights kept over all masked tensors."""
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


@torch.no_grad()
def apply_masks_(tensors: Mapping[str, torch.Tensor] | nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked-out entries of each tensor in place."""
    target = _tensors(tensors)
    for name, mask in masks.items():
        target[name].mul_(mask.to(target[name].dtype))


def mask_grads_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradients of masked-out weights, so optimizer moments never accumulate for them."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(grad.dtype))
