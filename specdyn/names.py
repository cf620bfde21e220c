"""Matrix and pair names as figures show them, and back: short labels that never collide (`shorten_names`),
and `resolve`, which accepts a full name, a figure label or any short form that names one matrix only."""

import re

from specdyn.errors import SpecdynError

LABEL_MAX_CHARS = 26  # longer matrix names are shortened in the middle


_CONTAINERS = {
    "layers",
    "layer",
    "blocks",
    "block",
    "h",
    "resblocks",
    "stages",
    "stage",
    "encoder_layers",
    "decoder_layers",
}
_SUFFIX = re.compile(r"(\.|_)(weight|kernel)$")


def _compact(parts: list[str], start: int = 0) -> str:
    """`layers.11.attn.in_proj_weight` -> `11.attn.in_proj`: the components from `start` on, without container
    words before a layer index and without the `weight` suffix; a bare index keeps its container
    (`layers.2.weight` -> `layers.2`, never `2`)."""
    name = _SUFFIX.sub("", ".".join(parts)) or ".".join(parts)
    full = name.split(".")
    kept = [
        i
        for i in range(start, len(full))
        if not (full[i] in _CONTAINERS and i + 2 < len(full) and full[i + 1].isdigit())
    ]
    if not kept:
        return name
    if all(full[i].isdigit() for i in kept) and kept[0] > 0:
        kept.insert(0, kept[0] - 1)
    return ".".join(full[i] for i in kept)


def _ellipsize(name: str, n: int) -> str:
    if len(name) <= n:
        return name
    tail = n * 2 // 3
    return name[: n - tail - 1] + "…" + name[-tail:]


def shorten_names(names: list[str], max_chars: int = LABEL_MAX_CHARS) -> list[str]:
    """Short, unique labels for matrix names: the common leading components are dropped (`model.`), container
    words before a layer index and the `weight` suffix go, and what is still too long loses its middle.
    Whenever shortening would make two labels equal, those keep more of their name."""
    names = list(names)
    if not names:
        return []
    parts = [n.split(".") for n in names]
    common = 0
    if len(names) > 1:
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
    levels = [
        [_ellipsize(_compact(p, common), max_chars) for p in parts],
        [_compact(p, common) for p in parts],
        [".".join(p[common:]) for p in parts],
        names,
    ]
    level = [0] * len(names)
    while True:  # names whose labels collide keep more of themselves; full names are unique, so this ends
        labels = [levels[lv][i] for i, lv in enumerate(level)]
        groups = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        bump = [i for idx in groups.values() if len(idx) > 1 for i in idx if level[i] < len(levels) - 1]
        if not bump:
            return labels
        for i in bump:
            level[i] += 1


def shorten_pairs(pairs: list[dict], matrix_names: list[str]) -> list[str]:
    """Labels for alignment pairs, `prev → next` with both names shortened as the matrices are and what `next`
    shares with `prev` dropped (`2.attn.in_proj → out_proj`); query-key pairs read `name (qk)`."""
    short = dict(zip(matrix_names, shorten_names(matrix_names)))
    labels = []
    for p in pairs:
        a, b = short.get(p["prev"], p["prev"]), short.get(p["next"], p["next"])
        if p["kind"] == "qk" and p["prev"] == p["next"]:
            labels.append(f"{a} (qk)")
            continue
        pa, pb = a.split("."), b.split(".")
        k = 0
        while k < min(len(pa), len(pb)) - 1 and pa[k] == pb[k]:
            k += 1
        rest = pb[k:]
        labels.append(f"{a} → {b if all(c.isdigit() for c in rest) else '.'.join(rest)}")
    if len(set(labels)) < len(labels):  # never ambiguous: fall back to both names in full
        labels = [f"{short.get(p['prev'], p['prev'])} → {short.get(p['next'], p['next'])}" for p in pairs]
    return labels


def _forms(name: str) -> set[str]:
    """The short forms of one full name: it without the `weight` suffix, and each dotted tail of either."""
    out = set()
    for full in {name, _SUFFIX.sub("", name)}:
        parts = full.split(".")
        out |= {".".join(parts[i:]) for i in range(len(parts))}
    return out


def resolve(name: str, names: list[str], where: str = "") -> str:
    """The full name `name` stands for among `names`: itself, its figure label, or a short form (a dotted tail,
    with or without `weight`) that only one of them has; an ambiguous or unknown name is a one-line error."""
    if name in names:
        return name
    labels = dict(zip(shorten_names(names), names))
    if name in labels:
        return labels[name]
    hits = [n for n in names if name in _forms(n) or name in _forms(_compact(n.split(".")))]
    if len(hits) == 1:
        return hits[0]
    prefix = f"{where}: " if where else ""
    if hits:
        raise SpecdynError(
            f"{prefix}{name!r} names {len(hits)} matrices ({', '.join(hits[:4])}{' ...' if len(hits) > 4 else ''}); "
            "give more of the name"
        )
    raise SpecdynError(f"{prefix}no matrix {name!r}; {close_names(name, names)}")


def close_names(name: str, options: list[str]) -> str:
    """`did you mean ...?` for a mistyped name, else a listing of the names there are."""
    import difflib

    near = difflib.get_close_matches(name, options, n=3, cutoff=0.4)
    if near:
        return "did you mean " + ", ".join(repr(n) for n in near) + "?"
    return f"it has {len(options)}: " + ", ".join(options[:8]) + (" ..." if len(options) > 8 else "")
