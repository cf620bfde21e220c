"""GPT-BigCode (SantaCoder, StarCoder): `c_attn` is an nn.Linear (rows are outputs). With `multi_query` (the
default) its rows are [q (H heads); k (1 head); v (1 head)] (GPTBigCodeAttention.forward:
`split((embed_dim, kv_dim, kv_dim))`), else viewed per head as (H, 3, head_dim) (`view(..., H, 3 * head_dim)`
then `split(3 * [head_dim])`). Sequential blocks, the LM head tied to `wte`."""

from specdyn.arch.base import Family, config_heads
from specdyn.arch.gpt2 import gpt_stack


def _heads(config: dict):
    H, _ = config_heads(config)
    return H, 1 if config.get("multi_query", True) else H


FAMILY = Family(
    name="gpt_bigcode",
    model_types=("gpt_bigcode",),
    stacks=(gpt_stack("wte"),),
    heads_chains=(("lm_head",),),
    heads=_heads,
    layout=lambda config: "blocks" if config.get("multi_query", True) else "per_head",
)
