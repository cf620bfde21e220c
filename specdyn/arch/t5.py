"""T5 (encoder-decoder): `shared` embeds both stacks (encoder/decoder `embed_tokens` are tied to it); q, k, v, o
of inner size num_heads * d_kv; the decoder's `EncDecAttention` reads the decoder stream in q and the encoder's
output (its last `wo`) in k and v; the MLP is wi -> wo, or gated wi_0, wi_1 -> wo."""

from specdyn.arch.base import Attention, Family, Stack


def _attention(layer: str, module: str, cross: bool = False) -> Attention:
    p = f"layer.{layer}.{module}."
    return Attention(q=p + "q", k=p + "k", v=p + "v", o=p + "o", cross=cross)


def _mlp(layer: str) -> tuple[tuple[str, ...], str]:
    p = f"layer.{layer}.DenseReluDense."
    return (p + "wi", p + "wi_0", p + "wi_1"), p + "wo"


FAMILY = Family(
    name="t5",
    model_types=("t5",),
    stacks=(
        Stack(
            blocks=r"encoder\.block\.\d+\.",
            attention=(_attention("0", "SelfAttention"),),
            mlp_in=_mlp("1")[0],
            mlp_out=_mlp("1")[1],
            embed=("shared",),
        ),
        Stack(
            blocks=r"decoder\.block\.\d+\.",
            attention=(_attention("0", "SelfAttention"), _attention("1", "EncDecAttention", cross=True)),
            mlp_in=_mlp("2")[0],
            mlp_out=_mlp("2")[1],
            embed=("shared",),
        ),
    ),
    heads_chains=(("lm_head",),),
)
