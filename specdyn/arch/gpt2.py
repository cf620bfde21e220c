"""GPT-2, OpenAI GPT-1 and ImageGPT: Conv1D weights (in x out, transposed so rows are outputs); `c_attn` fuses
q, k, v as column thirds (`split(split_size, dim=2)` in each attention's forward), so after the transpose its
rows are [q; k; v] blocks."""

from specdyn.arch.base import Attention, Family, Stack


def gpt_stack(embed: str) -> Stack:
    """The GPT block (`h.N.attn.c_attn` -> `c_proj`, `mlp.c_fc` -> `c_proj`) shared by GPT-2, GPT-1, ImageGPT and
    GPT-BigCode; only the token embedding's name differs."""
    return Stack(
        blocks=r"h\.\d+\.",
        attention=(Attention(qkv="attn.c_attn", o="attn.c_proj"),),
        mlp_in=("mlp.c_fc",),
        mlp_out="mlp.c_proj",
        embed=(embed,),
    )


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    stacks=(gpt_stack("wte"),),
    heads_chains=(("lm_head",),),
    layout=lambda config: "blocks",
)

# OpenAI GPT-1 and ImageGPT: the same Conv1D `c_attn`, split in thirds (`x.split(self.split_size, dim=2)`)
OPENAI = Family(
    name="openai-gpt",
    model_types=("openai-gpt",),
    stacks=(gpt_stack("tokens_embed"),),
    heads_chains=(("lm_head",),),
)
IMAGEGPT = Family(name="imagegpt", model_types=("imagegpt",), stacks=FAMILY.stacks, heads_chains=FAMILY.heads_chains)
