"""The model's own structure, from its Hugging Face config: built on the meta device (no weights, no memory), it
gives the registration order, each parameter's module type, tied parameters, and how the checkpoint's tensor
names map to the model's (transformers renames legacy names on load; we apply the same renaming).

transformers is optional: `inspect_model` returns (None, reason) when it is missing or cannot build the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import dataclass, field

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
    stacks: dict[str, ExpertStack] = field(default_factory=dict)  # model name -> a stack of experts' matrices
    expert_keys: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # per-expert tensor -> (stack, e, part)
    routers: set[str] = field(default_factory=set)  # parameters of a router module (kind "router")


@dataclass
class ExpertStack:
    """A mixture-of-experts parameter holding every expert's matrix along its leading axis (transformers 5's
    `experts.gate_up_proj` (E, 2I, H), `experts.down_proj` (E, H, I)), as the experts module's flags say:
    `is_transposed` (each expert stored in x out), `is_concatenated` ([gate; up] halves, else interleaved)."""

    module: str  # the experts module (model name)
    experts: int
    roles: tuple[str, ...]  # per part of an expert's output axis: "gate", "up" or "down"
    transposed: bool
    interleaved: bool
    names: dict[tuple[int, int], str] = field(default_factory=dict)  # (expert, part) -> per-expert tensor name

    def name(self, e: int, part: int) -> str:
        """The name an expert's matrix has as a tensor of its own (as transformers saves it)."""
        return self.names.get((e, part)) or f"{self.module}.{e}.{self.roles[part]}_proj.weight"


UNDECLARED_EXPERTS = "a stack of experts whose layout its module does not declare (is_transposed): not split"
_STACK_ROLES = {"gate_up_proj": ("gate", "up"), "up_proj": ("up",), "down_proj": ("down",)}
# DBRX's DbrxExpertGLU: w1, v1, w2 are (E * F, H); forward: gate x w1[e]^T, up x v1[e]^T, down (..) @ w2[e]
_DBRX_ROLES = {"w1": ("gate",), "v1": ("up",), "w2": ("down",)}


def expert_stack(module, owner: str, pname: str, shape: tuple[int, ...]) -> ExpertStack | None:
    """The ExpertStack a parameter is, if its module is an experts module with transformers 5's stacked layout
    (or DBRX's experts, stacked along the rows of 2-D parameters)."""
    E = getattr(module, "moe_num_experts", None)
    if isinstance(E, int) and pname in _DBRX_ROLES and len(shape) == 2 and shape[0] % E == 0:
        return ExpertStack(owner, E, _DBRX_ROLES[pname], pname == "w2", False)
    E = getattr(module, "num_experts", None)
    if not isinstance(E, int) or len(shape) != 3 or shape[0] != E or pname not in _STACK_ROLES:
        return None
    if not hasattr(module, "is_transposed"):  # a layout transformers does not declare (Llama 4 is in x out)
        return None
    roles = _STACK_ROLES[pname]
    transposed = bool(getattr(module, "is_transposed", False))
    if shape[2 if transposed else 1] % len(roles):
        return None
    return ExpertStack(owner, E, roles, transposed, not getattr(module, "is_concatenated", True))


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
    """checkpoint name -> (model name, converted?, (expert, part) if the conversion only stacks experts) with
    transformers' own load-time renaming, where it has one."""
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
            return new, pattern is not None, _expert_part(key, pattern, converters)

        rename.plain = lambda key: rename_source_key(key, renamings, [], prefix, meta)[0]  # renamings only
        return rename
    except Exception:  # an older or newer transformers without this API: names must match as they are

        def same(key):
            return key, False, None

        same.plain = lambda key: key
        return same


def _expert_part(key: str, pattern: str | None, converters) -> tuple[int, int] | None:
    """(expert, part) of a per-expert tensor that a converter only stacks (MergeModulelist along a new leading
    axis, then Concatenate of its sources along the output axis): `.experts.*.w3.weight` is part 1 of
    [w1; w3]. Any other conversion (a transpose, an interleave) returns None: it is not a plain stacking."""
    if pattern is None:
        return None
    conv = next((c for c in converters if pattern in c.source_patterns), None)
    ops = [(type(op).__name__, getattr(op, "dim", None)) for op in (conv.operations if conv else [])]
    if not ops or ops[0] != ("MergeModulelist", 0) or any(op != ("Concatenate", 1) for op in ops[1:]):
        return None
    m = re.search(re.escape(pattern).replace(r"\*", r"(\d+)"), key)
    if not m or not m.groups():
        return None
    return int(m.group(1)), conv.source_patterns.index(pattern)


def _expert_names(model, rename, stacks: dict[str, ExpertStack]) -> None:
    """Each stack's per-expert tensor names as transformers saves them (its reverse conversion, run on the meta
    model's state dict: names and shapes only), with the model's own module names (`block_sparse_moe.experts.3.w1`
    saved, `mlp.experts.3.w1` in the model's terms); stacks it does not cover keep the `<module>.<e>.<role>_proj`
    default."""
    if not stacks:
        return
    try:
        from transformers.core_model_loading import revert_weight_conversion

        saved = revert_weight_conversion(model, model.state_dict())
    except Exception:
        return
    for key in saved:
        new, _, part = rename(key)
        if part is not None and new in stacks:
            stacks[new].names[part] = rename.plain(key)


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
    order, kinds, refused, aliases, stacks, routers = [], {}, {}, {}, {}, set()
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
        module = modules[owner] if owner else model
        if (stack := expert_stack(module, owner, pname, shape)) is not None:
            stacks[name] = stack
            continue
        if isinstance(getattr(module, "num_experts", None), int) and pname.endswith("bias"):
            refused[name] = "per-expert biases, not a matrix"
            continue
        if isinstance(getattr(module, "num_experts", None), int) and len(shape) == 3:
            refused[name] = UNDECLARED_EXPERTS
            continue
        kind = module_kind(module, pname, shape)
        if isinstance(kind, str):
            refused[name] = kind
        else:
            kinds[name] = kind
            if "router" in type(module).__name__.lower():
                routers.add(name)
    rename = _renamer(model)
    _expert_names(model, rename, stacks)
    buffers = {n for n, _ in model.named_buffers()}
    known = set(order) | set(aliases) | buffers
    to_model, converted, expert_keys = {}, [], {}
    for key in ckpt_names:
        new, conv, part = rename(key)
        if conv and part is not None and new in stacks:  # one expert's own tensor: the model stacks it on load
            expert_keys[key] = (new, *part)
        elif conv:
            converted.append(key)
        elif new in known:
            to_model[key] = new
        elif key in known:
            to_model[key] = key
    to_ckpt = {name: key for key, name in to_model.items() if name not in aliases}
    for key, name in to_model.items():  # a tied weight saved only under its alias (rare) is read from there
        to_ckpt.setdefault(aliases.get(name, name), key)
    return ModelView(
        type(model).__name__, version, order, kinds, refused, aliases, to_ckpt, to_model, converted, buffers,
        stacks, expert_keys, routers,
    )  # fmt: skip
