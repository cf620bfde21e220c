"""Which checkpoint tensor fills each tensor of a transformers model, with transformers' own key handling.

A Hugging Face checkpoint need not hold every tensor of the model's state dict under the same name: tied heads
(GPT-2's `lm_head.weight` is `transformer.wte.weight`) are left out of the file, transformers 5 saves
GPT-NeoX's head as `embed_out.weight` and renames it on load, a base-model checkpoint lacks the `gpt_neox.`
prefix, and legacy buffers (`attention.masked_bias`) linger in old files. The renames come from transformers'
conversion mapping (the table `from_pretrained` applies); ties from the model's shared parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from specdyn.errors import SpecdynError

# Buffers old checkpoints carry that current models rebuild (transformers ignores them on load too).
LEGACY_BUFFERS = re.compile(r"(^|\.)(inv_freq|masked_bias|position_ids)$|\.attn(ention)?\.bias$")


def is_hf_model(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _renamer(model, model_keys: Mapping):
    """checkpoint name -> model name by transformers' conversion mapping; refuses fused conversions (a tensor
    made of several checkpoint tensors cannot be read one tensor at a time)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:  # an older transformers: names load as they are (plus the base-model prefix below)
        get_model_conversion_mapping = None
    transforms = get_model_conversion_mapping(model) if get_model_conversion_mapping else []
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    prefix = getattr(model, "base_model_prefix", "") or ""

    def rename(name: str) -> str:
        if get_model_conversion_mapping is None:
            new, fused = name, None
        else:
            new, fused = rename_source_key(name, renamings, converters, prefix or None, dict(model_keys))
        if fused is not None:
            raise SpecdynError(
                f"checkpoint tensor {name!r} is converted by transformers ({fused!r} -> fused tensors); specdyn "
                "evaluates checkpoints tensor by tensor and cannot load this family"
            )
        if new not in model_keys and prefix and f"{prefix}.{new}" in model_keys:  # a base-model checkpoint
            new = f"{prefix}.{new}"
        return new

    return rename


def hf_state_map(model: torch.nn.Module, ckpt_shapes: Mapping[str, tuple], where: Path) -> dict[str, str]:
    """model state-dict key -> checkpoint tensor name for a transformers model, or a one-line SpecdynError naming
    the first tensor that differs. A tied tensor the file leaves out reads its partner's tensor."""
    state = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    try:
        rename = _renamer(model, state)
        by_model = {}
        for name in ckpt_shapes:
            by_model.setdefault(rename(name), name)
    except SpecdynError as e:
        raise SpecdynError(f"{where}: {e.message}") from None
    ties: dict[int, list[str]] = {}
    for key, p in params.items():
        ties.setdefault(id(p), []).append(key)
    out = {}
    for key, tensor in state.items():
        name = by_model.get(key)
        if name is None and key in params:
            name = next((by_model[k] for k in ties[id(params[key])] if k in by_model), None)
        if name is None:
            if key not in params:
                continue  # a buffer the file does not hold: the model's own value stands, as in from_pretrained
            raise SpecdynError(
                f"{where}: the model ({type(model).__name__} from config.json) has {key!r} ({_fmt(tensor.shape)}) "
                "but the checkpoint has no such tensor; is config.json the one these weights were saved with?"
            )
        if tuple(ckpt_shapes[name]) != tuple(tensor.shape):
            raise SpecdynError(
                f"{where}: {key!r} is {_fmt(tensor.shape)} in the model ({type(model).__name__} from config.json) "
                f"but {name!r} is {_fmt(ckpt_shapes[name])} in the checkpoint"
            )
        out[key] = name
    used = set(out.values())
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    for name in ckpt_shapes:
        if name in used or LEGACY_BUFFERS.search(name) or any(p.search(name) for p in ignored):
            continue
        raise SpecdynError(
            f"{where}: the checkpoint has {name!r} ({_fmt(ckpt_shapes[name])}), which the model "
            f"({type(model).__name__} from config.json) lacks"
        )
    return out
