"""BLOOM and Falcon: one fused `query_key_value`. BLOOM and classic Falcon view its rows as
[heads, 3, head_dim] (`_split_heads`); Falcon with `multi_query` as [q (H heads); k (1); v (1)] blocks; Falcon's
`new_decoder_architecture` as [H_kv groups, H/H_kv queries + k + v, head_dim]. Falcon blocks are parallel
(attention and MLP read the block input) when `parallel_attn` or `new_decoder_architecture`."""

from specdyn.arch.base import Attention, Family, Stack, config_heads

_STACK = Stack(
    blocks=r"h\.\d+\.",
    attention=(Attention(qkv="self_attention.query_key_value", o="self_attention.dense"),),
    mlp_in=("mlp.dense_h_to_4h",),
    mlp_out="mlp.dense_4h_to_h",
    embed=("word_embeddings",),
)

BLOOM = Family(
    name="bloom",
    model_types=("bloom",),
    stacks=(_STACK,),
    heads_chains=(("lm_head",),),
    layout=lambda config: "per_head",
)


def _falcon_layout(config: dict) -> str:
    if config.get("new_decoder_architecture"):
        return "grouped"
    return "blocks" if config.get("multi_query", True) else "per_head"


def _falcon_heads(config: dict):
    H, _ = config_heads(config)
    if config.get("new_decoder_architecture"):
        return H, config.get("num_kv_heads") or H
    return H, 1 if config.get("multi_query", True) else H


FALCON = Family(
    name="falcon",
    model_types=("falcon",),
    stacks=(_STACK,),
    heads_chains=(("lm_head",),),
    heads=_falcon_heads,
    layout=_falcon_layout,
    parallel=lambda config: bool(config.get("parallel_attn", True) or config.get("new_decoder_architecture")),
)
