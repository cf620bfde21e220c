"""Branch edits (docs/method.md 3): the norm-preserving perturbation and lottery-ticket masks."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from specdyn import branching


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.tconv = nn.ConvTranspose2d(8, 4, 3)
        self.bn = nn.BatchNorm1d(10)
        self.fc1 = nn.Linear(10, 20)
        self.fc2 = nn.Linear(20, 5)


def test_matrix_names_follow_registration_order_and_skip_1d():
    net = Net()
    assert branching.matrix_names(net) == ["conv.weight", "tconv.weight", "fc1.weight", "fc2.weight"]
    assert branching.branch_names(net) == ["conv.weight", "tconv.weight", "fc1.weight"]


@pytest.mark.parametrize("scale", [0.1, 0.5, 1.0, 2.5])
def test_perturbation_preserves_norm_and_has_the_expected_cosine(scale):
    torch.manual_seed(0)
    w = torch.randn(512, 512)
    tensors = {"w": w.clone()}
    branching.perturb_(tensors, ["w"], scale, gen(1))
    new = tensors["w"]
    np.testing.assert_allclose(torch.linalg.norm(new).item(), torch.linalg.norm(w).item(), rtol=1e-6)
    cos = (new * w).sum() / (torch.linalg.norm(new) * torch.linalg.norm(w))
    # G is nearly orthogonal to W in 262144 dimensions: cos = 1/sqrt(1+c^2) up to ~1/sqrt(N).
    assert abs(cos.item() - 1 / math.sqrt(1 + scale**2)) < 0.01


def test_perturbation_matches_the_formula_and_touches_only_named_tensors():
    torch.manual_seed(0)
    net = Net()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    names = branching.branch_names(net)
    branching.perturb_(net, names, 0.3, gen(7))
    after = net.state_dict()
    g = gen(7)
    for name in names:  # independent recomputation, drawing G in the same order from the same seed
        w = before[name].double()
        G = torch.randn(w.shape, generator=g).double()
        w1 = w + 0.3 * w.norm() * G / G.norm()
        expected = (w1 * w.norm() / w1.norm()).float()
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-7)
    for name in before:
        if name not in names:
            assert torch.equal(after[name], before[name]), name


def test_perturbation_is_deterministic_and_zero_scale_is_identity():
    torch.manual_seed(0)
    a = {"w": torch.randn(30, 40)}
    b = {"w": a["w"].clone()}
    branching.perturb_(a, ["w"], 0.5, gen(3))
    branching.perturb_(b, ["w"], 0.5, gen(3))
    assert torch.equal(a["w"], b["w"])
    c = {"w": a["w"].clone()}
    branching.perturb_(c, ["w"], 0.5, gen(4))
    assert not torch.equal(a["w"], c["w"])
    original = torch.randn(30, 40, generator=gen(0))
    d = {"w": original.clone()}
    branching.perturb_(d, ["w"], 0.0, gen(3))
    torch.testing.assert_close(d["w"], original, rtol=1e-6, atol=1e-7)


def test_perturbation_keeps_dtype():
    t = {"w": torch.randn(16, 16).to(torch.bfloat16)}
    branching.perturb_(t, ["w"], 1.0, gen())
    assert t["w"].dtype == torch.bfloat16


def _reference_mask(tensors, density):
    """The paper's get_masks in numpy: all ndim>=2 tensors but the last, global threshold, strict >."""
    names = [n for n, t in tensors.items() if t.ndim >= 2][:-1]
    pooled = np.sort(np.concatenate([tensors[n].abs().numpy().ravel() for n in names]))
    thr = pooled[-int(density * len(pooled))]
    return {n: tensors[n].abs().numpy() > thr for n in names}


@pytest.mark.parametrize("density", [0.01, 0.05, 0.3, 1.0])
def test_global_magnitude_mask_matches_the_paper_and_keeps_int_dN_minus_1(density):
    torch.manual_seed(0)
    tensors = {
        "a": torch.randn(40, 30),
        "bias": torch.randn(40),
        "b": torch.randn(8, 3, 3, 3),
        "final": torch.randn(5, 40),
    }
    masks = branching.global_magnitude_mask(tensors, density)
    assert list(masks) == ["a", "b"]  # 1-D tensors and the final matrix are not masked
    ref = _reference_mask(tensors, density)
    for n in masks:
        assert masks[n].dtype == torch.bool
        np.testing.assert_array_equal(masks[n].numpy(), ref[n])
    n_total = 40 * 30 + 8 * 27
    assert sum(int(m.sum()) for m in masks.values()) == int(density * n_total) - 1


def test_global_magnitude_mask_is_global_not_per_layer():
    small = torch.full((10, 10), 0.01) + torch.rand(10, 10) * 1e-3
    large = torch.full((10, 10), 1.0) + torch.rand(10, 10) * 1e-3
    masks = branching.global_magnitude_mask({"small": small, "large": large, "final": torch.ones(2, 2)}, 0.5)
    assert masks["small"].sum() == 0 and masks["large"].sum() == 99


def test_global_magnitude_mask_edge_cases():
    t = {"a": torch.randn(10, 10), "final": torch.randn(3, 3)}
    assert sum(int(m.sum()) for m in branching.global_magnitude_mask(t, 0.005).values()) == 0  # int(0.5) == 0
    with pytest.raises(ValueError):
        branching.global_magnitude_mask(t, 0.0)
    with pytest.raises(ValueError):
        branching.global_magnitude_mask(t, 1.5)
    with pytest.raises(ValueError):
        branching.global_magnitude_mask({"final": torch.randn(3, 3)}, 0.5)
    all_in = branching.global_magnitude_mask(t, 0.5, exclude_last=False)
    assert set(all_in) == {"a", "final"}


def test_random_mask_keeps_each_layers_density():
    torch.manual_seed(0)
    tensors = {"a": torch.randn(300, 300), "b": torch.randn(300, 300) * 3, "final": torch.randn(3, 3)}
    masks = branching.global_magnitude_mask(tensors, 0.2)
    rnd = branching.random_mask_like(masks, gen(5))
    for n in masks:
        q = masks[n].float().mean().item()
        assert abs(rnd[n].float().mean().item() - q) < 0.01
        assert rnd[n].shape == masks[n].shape and rnd[n].dtype == torch.bool
    # it is not the magnitude mask itself, and it is reproducible
    assert not torch.equal(rnd["b"], masks["b"])
    again = branching.random_mask_like(masks, gen(5))
    assert all(torch.equal(rnd[n], again[n]) for n in masks)


def test_masks_hold_through_adamw_steps_with_weight_decay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 4))
    masks = branching.global_magnitude_mask(dict(net.named_parameters()), 0.3)
    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    branching.apply_masks_(net, masks)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.5)
    x, y = torch.randn(64, 20), torch.randint(4, (64,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        branching.mask_grads_(net, masks)
        opt.step()
        branching.apply_masks_(net, masks)
    params = dict(net.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert not torch.equal(params[name][mask], start[name][mask]), name  # kept weights trained
    assert branching.mask_density(masks) == pytest.approx(
        sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    )
