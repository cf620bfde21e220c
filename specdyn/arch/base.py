"""What an architecture states per weight: its role in a block (query, key, value, fused q/k/v, attention
output, MLP input or output, input embedding, head), the fused row layout and head counts from the config, and
so the neighbour pairs in forward order (docs/architectures.md).

Role names are written against the model's own parameter names (as `named_parameters()` lists them in the
installed transformers), relative to a block's prefix and without `.weight`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "nhead", "encoder_attention_heads")
KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")


@dataclass(frozen=True)
class Attention:
    """One attention sublayer: separate q/k/v projections or one fused `qkv`, and its output projection.
    `cross`: k and v read the encoder's output (encoder-decoder models)."""

    o: str
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""
    cross: bool = False


@dataclass(frozen=True)
class Stack:
    """A stack of identical blocks: `blocks` is a regex matching a block's prefix (searched after any wrapper
    prefix), `embed` regexes of the matrices that write the stack's input. `mlp_fused`: one projection whose
    output rows are two halves (gate and up, `chunk(2)` in the forward) that both feed `mlp_out`. A mixture of
    experts: `router` (its gates, kind `router`, reading the MLP's input) and `experts`, the experts module,
    whose experts' matrices are named `<experts>.<e>.gate|up|down` (specdyn.arch.structure)."""

    blocks: str
    attention: tuple[Attention, ...]
    mlp_in: tuple[str, ...]
    mlp_out: str
    embed: tuple[str, ...] = ()
    mlp_fused: str = ""
    router: tuple[str, ...] = ()
    experts: str = ""


def config_heads(config: dict) -> tuple[int | None, int | None]:
    """(H, H_kv) from a config's usual keys; H_kv defaults to H (no grouped-query attention)."""
    H = next((config[k] for k in HEAD_KEYS if isinstance(config.get(k), int)), None)
    Hkv = next((config[k] for k in KV_KEYS if isinstance(config.get(k), int)), None)
    return H, Hkv or H


@dataclass(frozen=True)
class Family:
    """An architecture family: its stacks, head chains (regexes of full names, chained in order after the last
    block), how its config gives heads and the fused layout, and whether attention and MLP read the same input."""

    name: str
    model_types: tuple[str, ...]
    stacks: tuple[Stack, ...]
    heads_chains: tuple[tuple[str, ...], ...] = ()
    heads: Callable[[dict], tuple[int | None, int | None]] = config_heads
    layout: Callable[[dict], str] = lambda config: "blocks"
    parallel: Callable[[dict], bool] = lambda config: False
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def fused(self, config: dict) -> tuple[str, int, int] | None:
        H, Hkv = self.heads(config)
        return (self.layout(config), H, Hkv) if H else None
