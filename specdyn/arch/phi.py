"""Phi and GPT-J: separate q/k/v projections, attention and MLP in parallel on the same block input
(Phi: `dense` output, fc1 -> fc2; GPT-J: `out_proj`, fc_in -> fc_out; both untied LM heads)."""

from specdyn.arch.base import Attention, Family, Stack

PHI = Family(
    name="phi",
    model_types=("phi",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.",
            attention=(
                Attention(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.dense"),
            ),
            mlp_in=("mlp.fc1",),
            mlp_out="mlp.fc2",
            embed=("embed_tokens",),
        ),
    ),
    heads_chains=(("lm_head",),),
    parallel=lambda config: True,
)

GPTJ = Family(
    name="gptj",
    model_types=("gptj",),
    stacks=(
        Stack(
            blocks=r"h\.\d+\.",
            attention=(Attention(q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.out_proj"),),
            mlp_in=("mlp.fc_in",),
            mlp_out="mlp.fc_out",
            embed=("wte",),
        ),
    ),
    heads_chains=(("lm_head",),),
    parallel=lambda config: True,
)
