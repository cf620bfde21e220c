"""MPT and ModernBERT: one fused `Wqkv` whose rows are [q; k; v] blocks (MPT: `chunk(3, dim=2)`; ModernBERT:
`view(..., 3, H, head_dim)`). ModernBERT's MLP `Wi` fuses its input and gate halves (`input, gate =
Wi(x).chunk(2, dim=-1)`; Wo(act(input) * gate)): each half feeds `Wo`. Sequential blocks; MPT's LM head and
ModernBERT's MLM decoder are tied to the token embedding."""

from specdyn.arch.base import Attention, Family, Stack

MPT = Family(
    name="mpt",
    model_types=("mpt",),
    stacks=(
        Stack(
            blocks=r"blocks\.\d+\.",
            attention=(Attention(qkv="attn.Wqkv", o="attn.out_proj"),),
            mlp_in=("ffn.up_proj",),
            mlp_out="ffn.down_proj",
            embed=("wte",),
        ),
    ),
    heads_chains=(("lm_head",),),
)

MODERNBERT = Family(
    name="modernbert",
    model_types=("modernbert",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(Attention(qkv="attn.Wqkv", o="attn.Wo"),),
            mlp_in=(),
            mlp_fused="mlp.Wi",
            mlp_out="mlp.Wo",
            embed=("tok_embeddings",),
        ),
    ),
    heads_chains=(("head.dense", "decoder"), ("head.dense", "classifier")),
)
