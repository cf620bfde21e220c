"""A tiny checkpoint series for tests: every matrix kind analyze treats specially, weights that drift."""

import json

import torch
from safetensors.torch import save_file


class Net(torch.nn.Module):
    """Small, but with every matrix kind analyze treats specially."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(13, 16)
        self.attn = torch.nn.MultiheadAttention(16, 4, bias=False)
        self.conv = torch.nn.Conv2d(16, 8, 3)
        self.fc = torch.nn.Linear(8, 20)
        self.out = torch.nn.Linear(20, 5)


def write_series(run_dir, steps=(0, 10, 20, 30, 40), seed=0, mutate=None):
    """A series whose weights drift from step to step; returns {step: state_dict}."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = Net()
    states = {}
    for step in steps:
        sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        if mutate:
            mutate(step, sd)
        meta = {"step": str(step), "param_order": json.dumps(list(sd)), "config": json.dumps({"n_heads": 4})}
        save_file(sd, str(run_dir / f"step_{step}.safetensors"), metadata=meta)
        states[step] = sd
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.95).add_(0.1 * torch.randn_like(p))
                if p.ndim == 2:  # grow a rank-1 direction, as training does
                    p.add_(0.3 * torch.outer(torch.randn(p.shape[0]), torch.randn(p.shape[1])))
    return states
