"""The model's own structure, from its Hugging Face config: built on the meta device (no weights, no memory), it
gives the registration order, each parameter's module type, tied parameters, and how the checkpoint's tensor
names map to the model's (transformers renames legacy names on load; we apply the same renaming).

transformers is optional: `inspect_model` returns (None, reason) when it is missing or cannot build the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

from specdyn.spectral.matrices import tokens_shape


@dataclass
class ModelView:
    """What the model definition says about a checkpoint's tensors. Names are the model's; `to_ckpt` maps each
    canonical model name to the checkpoint's tensor name."""

    model_class: str
    version: str
    order: list[str]  # canonical (first-registered) parameter names, registration order
    kinds: dict[str, tuple[str, bool]]  # model name -> (kind, transposed)
    refused: dict[str, str]  # model name -> why it is not a matrix
    aliases: dict[str, str]  # tied alias (model name) -> canonical model name
    to_ckpt: dict[str, str]  # canonical model name -> checkpoint name
    to_model: dict[str, str]  # checkpoint name -> model name (aliases included)
    converted: list[str]  # checkpoint names transformers would convert (merge, split), not just rename
    buffers: set[str]  # the model's buffers (a causal mask saved by an old transformers is not a weight)


def module_kind(module, pname: str, shape: tuple[int, ...]) -> tuple[str, bool] | str:
    """(kind, transposed) of a parameter from its owning module's type, or a reason it is not a matrix."""
    import torch.nn as nn

    types = {c.__name__ for c in type(module).__mro__}
    if "Conv1D" in types:  # transformers.pytorch_utils.Conv1D: weight is in x out
        return "linear", True
    if isinstance(module, nn.Embedding):
        return "embedding", False
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "tconv", False
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv", False
    if isinstance(module, nn.LSTM) and pname.startswith(("weight_ih", "weight_hh")):
        return "lstm", False
    if isinstance(module, nn.MultiheadAttention) and pname == "in_proj_weight":
        return "attention_in_proj", False
    if len(shape) == 2:
        return "linear", False
    try:
        tokens_shape(shape)
    except Exception:
        return f"a {list(shape)} {type(module).__name__}.{pname} that is not a convolution has no matrix rule"
    return "embedding", False  # (1, ..., T, d): a sequence of vectors (cls_token, position embeddings)


AUTO_CLASSES = (  # tried when config.json names no architecture: the one matching the most tensors wins
    "AutoModel", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification", "AutoModelForImageClassification",
)  # fmt: skip


def _classes(config) -> list:
    """The model classes config.json can mean: its `architectures` (transformers' own classes only; remote code is
    never run), else every auto class that has a model for this config."""
    import transformers

    archs = getattr(config, "architectures", None) or []
    named = [getattr(transformers, a) for a in archs if isinstance(a, str) and hasattr(transformers, a)]
    if named:
        return named[:1]
    out = []
    for auto in AUTO_CLASSES:
        mapping = getattr(getattr(transformers, auto, None), "_model_mapping", None)
        try:
            out.append(mapping[type(config)])
        except Exception:
            continue
    return out


def _build(cls, config):
    import torch

    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
            return cls(config)
    finally:
        quiet.setLevel(level)


def _renamer(model):
    """checkpoint name -> (model name, converted?) with transformers' own load-time renaming, where it has one."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(model)
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        meta = model.state_dict()
        prefix = getattr(model, "base_model_prefix", None)

        def rename(key):
            new, pattern = rename_source_key(key, renamings, converters, prefix, meta)
            return new, pattern is not None

        return rename
    except Exception:  # an older or newer transformers without this API: names must match as they are
        return lambda key: (key, False)


def inspect_model(config_dict: dict, ckpt_names: list[str]) -> tuple[ModelView | None, str]:
    """The ModelView of a checkpoint from its config.json, or (None, why not)."""
    if not isinstance(config_dict.get("model_type"), str):
        return None, "config.json has no model_type"
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed (pip install 'specdyn[hf]')"
    best = None
    try:
        config = transformers.AutoConfig.for_model(**config_dict)
        for cls in _classes(config):
            view = _view(_build(cls, config), transformers.__version__, ckpt_names)
            score = (len(view.to_model), len(view.order) + len(view.aliases))  # ties: the fuller model (its head)
            if best is None or score > (len(best.to_model), len(best.order) + len(best.aliases)):
                best = view
    except Exception as e:
        return None, f"transformers could not build {config_dict['model_type']!r} from config.json ({type(e).__name__})"
    if best is None:
        return None, f"transformers has no model class for {config_dict['model_type']!r}"
    return best, ""


def _view(model, version: str, ckpt_names: list[str]) -> ModelView:
    modules = dict(model.named_modules())
    first: dict[int, str] = {}
    order, kinds, refused, aliases = [], {}, {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
            continue
        first[id(p)] = name
        order.append(name)
        shape = tuple(p.shape)
        if len(shape) < 2 or 0 in shape:
            continue
        owner, _, pname = name.rpartition(".")
        kind = module_kind(modules[owner] if owner else model, pname, shape)
        if isinstance(kind, str):
            refused[name] = kind
        else:
            kinds[name] = kind
    rename = _renamer(model)
    buffers = {n for n, _ in model.named_buffers()}
    known = set(order) | set(aliases) | buffers
    to_model, converted = {}, []
    for key in ckpt_names:
        new, conv = rename(key)
        if conv:
            converted.append(key)
        elif new in known:
            to_model[key] = new
        elif key in known:
            to_model[key] = key
    to_ckpt = {name: key for key, name in to_model.items() if name not in aliases}
    for key, name in to_model.items():  # a tied weight saved only under its alias (rare) is read from there
        to_ckpt.setdefault(aliases.get(name, name), key)
    return ModelView(
        type(model).__name__, version, order, kinds, refused, aliases, to_ckpt, to_model, converted, buffers
    )
