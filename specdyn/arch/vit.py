"""ViT: the patch projection (a conv) writes the first block's input; `cls_token` (1, 1, d) and
`position_embeddings` (1, T, d) are analyzed as 1 x d and T x d and not paired; separate q/k/v projections, the
MLP fc1 -> fc2, and the classifier head. Names are those of the installed transformers' ViT modules (older
checkpoints' names are mapped by transformers' own load-time renaming)."""

from specdyn.arch.base import Attention, Family, Stack

FAMILY = Family(
    name="vit",
    model_types=("vit",),
    stacks=(
        Stack(
            blocks=r"layers\.\d+\.|encoder\.layer\.\d+\.",
            attention=(
                Attention(
                    q="attention.q_proj|attention.attention.query",
                    k="attention.k_proj|attention.attention.key",
                    v="attention.v_proj|attention.attention.value",
                    o="attention.o_proj|attention.output.dense",
                ),
            ),
            mlp_in=("mlp.fc1|intermediate.dense",),
            mlp_out="mlp.fc2|output.dense",
            embed=("patch_embeddings.projection",),
        ),
    ),
    heads_chains=(("classifier",),),
)
