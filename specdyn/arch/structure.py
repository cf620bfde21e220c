"""From a checkpoint's tensors and metadata to a Structure (see specdyn.arch)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from specdyn.arch.base import Family, config_heads
from specdyn.arch.chain import Names, family_pairs
from specdyn.arch.guess import guess_warning, refine_guess
from specdyn.arch.registry import family_for
from specdyn.arch.unet import TASKS
from specdyn.spectral.matrices import GATE_UP, UNSPLIT, Cut, MatrixSpec, classify, looks_fused
from specdyn.spectral.pairs import PairSpec, find_pairs

GUESSED = "guessed from names and shapes"
FORMAT_ORDER = "registration order kept by the checkpoint format; kinds and pairs from names and shapes"
MODEL = "model definition"


@dataclass
class Structure:
    """What the analysis of a series takes from its first checkpoint (docs/architectures.md)."""

    specs: list[MatrixSpec]
    pairs: list[PairSpec] | None  # None: consecutive pairs by shape rules (find_pairs)
    heads: int | None
    kv_heads: int | None
    structure: str  # where order, kinds and pairs came from
    tied: dict[str, str] = field(default_factory=dict)  # alias -> the analyzed matrix it shares
    refused: dict[str, str] = field(default_factory=dict)  # tensor -> why it is not analyzed as a matrix
    family: str | None = None
    model_type: str | None = None
    model_class: str | None = None
    broken: list[str] = field(default_factory=list)  # links the family states whose shapes do not chain
    warning: str | None = None
    unsplit: list[str] = field(default_factory=list)  # fused projections analyzed whole: no layout is known

    def pairs_for(self, specs: list[MatrixSpec]) -> list[PairSpec]:
        """The pairs among `specs` (after --include/--exclude)."""
        if self.pairs is None:
            return find_pairs(specs, self.heads)
        names = {s.name for s in specs}
        return [p for p in self.pairs if p.prev in names and p.next in names]

    def ignored(self) -> set[str]:
        """Tensor names a later checkpoint may hold that are not analyzed (aliases, refused tensors)."""
        return set(self.tied) | set(self.refused)

    def attrs(self) -> dict:
        return {
            "structure": self.structure,
            "architecture": self.family,
            "model_type": self.model_type,
            "model_class": self.model_class,
            "kv_heads": self.kv_heads,
            "tied": dict(self.tied),
            "refused": dict(self.refused),
        }


def _matrix_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(int(d) for d in s) for n, s in shapes.items() if len(s) >= 2 and 0 not in s}


def describe(
    shapes: dict[str, tuple[int, ...]],
    metadata: dict,
    task: str | None = None,
    ordered: bool = True,
    heads: int | None = None,
    own_task: bool = False,
    aliases: dict[str, str] | None = None,
) -> Structure:
    """The Structure of a checkpoint: `shapes` in the reader's order, its metadata, the specdyn task that wrote
    it (if any; `own_task`: a built-in task of `specdyn train`, whose models specdyn defines), whether the
    reader's order is the registration order, --heads (overrides the config), and tensors that share storage
    with an earlier one (`aliases`: alias -> first name; analyzed once, as tied, when no model says otherwise)."""
    config = metadata.get("config") if isinstance(metadata.get("config"), dict) else {}
    if config.get("model_type") and "specdyn_task" not in config:
        return _from_config(shapes, config, ordered, heads)
    if not heads:
        heads = _metadata_heads(metadata)
    tied = {a: c for a, c in (aliases or {}).items() if a != c and a in shapes and c in shapes}
    specs, notes = refine_guess(_guessed_specs({n: s for n, s in shapes.items() if n not in tied}), heads)
    if task in TASKS:
        pairs, broken = TASKS[task](specs)
        return Structure(specs, pairs, heads, heads, FORMAT_ORDER, tied, family=f"specdyn:{task}", broken=broken)
    warning = None
    if not (own_task and ordered):
        warning = guess_warning(specs, notes, ordered, "no model definition (config.json with a model_type)")
    return Structure(specs, None, heads, heads, FORMAT_ORDER if ordered else GUESSED, tied, warning=warning)


HEAD_KEYS = ("n_heads", "num_heads", "num_attention_heads", "n_head", "nhead", "num_heads_attn")


def _metadata_heads(metadata: dict) -> int | None:
    for section in (metadata.get("config") or {}, metadata.get("hyper_parameters") or {}, metadata):
        if isinstance(section, dict):
            for key in HEAD_KEYS:
                if isinstance(section.get(key), int):
                    return section[key]
    return None


_STACK_NAME = re.compile(r"^(?P<module>.*\bexperts)\.(?P<param>gate_up_proj|up_proj|down_proj)$")


def _guessed_specs(shapes) -> list[MatrixSpec]:
    """Kinds from names and shapes. A 3-D `experts.gate_up_proj` / `up_proj` / `down_proj` is taken for a stack
    of experts in transformers 5's default layout (each expert out x in, [gate; up] halves), never a conv."""
    shapes = _matrix_shapes(shapes)
    stacks: dict[str, list[str]] = {}  # experts module -> its stacks, in order
    for n, s in shapes.items():
        if (m := _STACK_NAME.match(n)) and len(s) == 3:
            stacks.setdefault(m["module"], []).append(n)
    out = []
    for n, s in shapes.items():
        m = _STACK_NAME.match(n)
        if not (m and len(s) == 3):
            out.append(MatrixSpec(n, s, classify(n, s)))
        elif stacks[m["module"]][0] == n:  # every expert of the module, expert by expert
            for e in range(s[0]):
                for stack in stacks[m["module"]]:
                    out += _guessed_expert(m["module"], stack, shapes[stack], e)
    return out


def _guessed(shapes, H, ordered: bool, why: str) -> tuple[list[MatrixSpec], str]:
    """Specs guessed from names and shapes, and the warning naming every guess."""
    specs, notes = refine_guess(_guessed_specs(shapes), H)
    return specs, guess_warning(specs, notes, ordered, why)


def _guessed_expert(module: str, stack: str, shape: tuple[int, ...], e: int) -> list[MatrixSpec]:
    gate_up = stack.endswith("gate_up_proj") and shape[1] % 2 == 0
    roles = ("gate", "up") if gate_up else (stack.rpartition(".")[2].removesuffix("_proj"),)
    return [
        MatrixSpec(f"{module}.{e}.{role}_proj.weight", (shape[1] // len(roles), shape[2]), "linear", expert=e,
                   cut=Cut(stack, e, shape[0], j, len(roles)))
        for j, role in enumerate(roles)
    ]  # fmt: skip


def _from_config(shapes, config: dict, ordered: bool, heads_opt: int | None) -> Structure:
    from specdyn.arch.model import UNDECLARED_EXPERTS, inspect_model

    family = family_for(config["model_type"])
    H, Hkv = (family.heads if family else config_heads)(config)
    if heads_opt:
        H, Hkv = heads_opt, (Hkv if Hkv and H and heads_opt == H else heads_opt)
    view, why = inspect_model(config, list(shapes))
    mshapes = _matrix_shapes(shapes)
    if view is None or view.converted:
        if view is not None:
            why = (
                f"transformers converts {len(view.converted)} tensors (e.g. {view.converted[0]!r}) when loading "
                f"{view.model_class}, so they are not its parameters as stored"
            )
        specs, warning = _guessed(shapes, H, ordered, why)
        return Structure(
            specs, None, H, Hkv, FORMAT_ORDER if ordered else GUESSED, model_type=config["model_type"], warning=warning
        )
    specs, by_model, tied, unsplit = [], {}, {}, []
    fused = family.fused({**config, **({"num_attention_heads": H} if heads_opt else {})}) if family else None
    roles = _roles(family, view.order) if family else {}
    done_experts: set[str] = set()
    for mname in view.order:
        if mname in view.stacks:  # every expert of the module, in expert order, where its first stack registers
            module = view.stacks[mname].module
            if module not in done_experts:
                done_experts.add(module)
                for key, spec in _expert_specs(view, module, mshapes):
                    specs.append(spec)
                    by_model[key] = spec
            continue
        ckpt = view.to_ckpt.get(mname)
        if mname not in view.kinds or ckpt is None:
            continue
        kind, transposed = view.kinds[mname]
        role = roles.get(mname)
        if role is None and mname in view.routers:
            role = "router"
        split = fused if role == "qkv" else (GATE_UP if role == "gate_up" else None)
        if role is None and kind == "linear" and looks_fused(mname):  # no family states how it splits
            split = (UNSPLIT, H, Hkv)
            unsplit.append(ckpt)
        if kind == "linear" and role in ("head", "router"):
            kind = role
        spec = MatrixSpec(ckpt, mshapes[ckpt], "attention_in_proj" if role == "qkv" else kind, transposed, split)
        specs.append(spec)
        by_model[mname] = spec
    for alias, canonical in view.aliases.items():
        if canonical in by_model:
            tied[view_ckpt_name(view, alias)] = by_model[canonical].name
    refused = {view.to_ckpt.get(n, n): why for n, why in view.refused.items()}
    unsplit += [view.to_ckpt[n] for n, why in view.refused.items() if why == UNDECLARED_EXPERTS and n in view.to_ckpt]
    refused.update({k: "a buffer of the model, not a weight" for k, n in view.to_model.items() if n in view.buffers})
    unknown = [n for n in mshapes if n not in view.to_model and n not in view.expert_keys]
    if len(unknown) > len(specs):  # mostly unknown: this model definition does not describe the checkpoint
        why = f"{len(unknown)} tensors (e.g. {unknown[0]!r}) are not parameters of transformers' {view.model_class}"
        specs, warning = _guessed(shapes, H, ordered, why)
        return Structure(
            specs, None, H, Hkv, FORMAT_ORDER if ordered else GUESSED, model_type=config["model_type"], warning=warning
        )
    # transformers ignores a checkpoint's tensors that are not the model's (an old causal-mask buffer): so do we
    refused.update({n: f"not a parameter of {view.model_class} (transformers ignores it on load)" for n in unknown})
    pairs, broken = None, []
    if family:
        shown = {a: view_ckpt_name(view, a) for a in view.aliases}
        pairs, broken = family_pairs(family, config, Names(by_model, view.aliases, shown), H)
    return Structure(
        specs, pairs, H, Hkv, f"{MODEL} ({view.model_class}, transformers {view.version})", tied, refused,
        family.name if family else None, config["model_type"], view.model_class, broken,
        warning=_warning(family, config, unknown, view.model_class, unsplit), unsplit=unsplit,
    )  # fmt: skip


def _expert_specs(view, module: str, mshapes: dict) -> list[tuple[str, MatrixSpec]]:
    """(`<module>.<e>.<role>`, spec) of every expert of one experts module, expert by expert, each expert's
    matrices in the module's registration order (gate, up, down): read from per-expert tensors where the
    checkpoint has them (as transformers saves a model), else cut from the stacks (as the model holds them)."""
    stacks = [(n, st) for n, st in view.stacks.items() if st.module == module]
    own = {part: key for key, part in view.expert_keys.items()}
    out = []
    for e in range(stacks[0][1].experts):
        for stack, st in stacks:
            for j, role in enumerate(st.roles):
                key, ckpt = own.get((stack, e, j)), view.to_ckpt.get(stack)
                if key is not None:
                    spec = MatrixSpec(key, mshapes[key], "linear", st.transposed, expert=e)
                elif ckpt is not None:
                    whole = mshapes[ckpt]
                    shape = [whole[0] // st.experts, *whole[1:]][-2:]  # one expert's block, as stored
                    shape[1 if st.transposed else 0] //= len(st.roles)
                    cut = Cut(ckpt, e, st.experts, j, len(st.roles), st.interleaved)
                    spec = MatrixSpec(st.name(e, j), tuple(shape), "linear", st.transposed, expert=e, cut=cut)
                else:
                    continue
                out.append((f"{module}.{e}.{role}", spec))
    return out


def _warning(family, config, unknown, model_class, unsplit=()) -> str | None:
    parts = []
    if unsplit:
        parts.append(
            f"{len(unsplit)} fused projections or expert stacks are not split (into q/k/v, gate/up or experts) "
            f"for lack of a stated layout (e.g. {unsplit[0]!r}; recorded in `fused` or `refused`): they get no "
            "query-key, value-output or expert pairs"
        )
    if unknown:
        parts.append(
            f"{len(unknown)} tensors (e.g. {unknown[0]!r}) are not parameters of {model_class} and are not "
            "analyzed (recorded in the store's `refused`)"
        )
    if not family:
        parts.append(
            f"model_type {config['model_type']!r} has no architecture module: order and kinds from the model "
            "definition, pairs by shape rules (docs/architectures.md)"
        )
    return "; ".join(parts) or None


def view_ckpt_name(view, model_name: str) -> str:
    """The name a model parameter has in the checkpoint (or would have: a tied alias is usually not saved)."""
    return next((k for k, n in view.to_model.items() if n == model_name), model_name)


def _roles(family: Family, order: list[str]) -> dict[str, str]:
    """Model parameter name -> "qkv" (a fused projection), "gate_up" (a fused MLP input) or "head", from the
    family's role names."""
    roles = {}
    for stack in family.stacks:
        rx = re.compile(rf"(^|\.)({stack.blocks})")
        fused = {n for att in stack.attention for n in att.qkv.split("|") if n}
        gate_up = {n for n in stack.mlp_fused.split("|") if n}
        routers = {n for r in stack.router for n in r.split("|") if n}
        for name in order:
            m = rx.search(name)
            rel = name[m.end() :].removesuffix(".weight") if m else None
            if rel in fused:
                roles[name] = "qkv"
            elif rel in gate_up:
                roles[name] = "gate_up"
            elif rel in routers:
                roles[name] = "router"
    for chain in family.heads_chains:  # the last matrix of a head chain is the head (LM head, classifier)
        rx = re.compile(rf"(^|\.)({chain[-1]})\.weight$")
        roles.update({n: "head" for n in order if rx.search(n)})
    return roles
