"""BERT: separate query/key/value, `attention.output.dense`, `intermediate.dense` -> `output.dense`; the heads
are the pooler and classifier (sequence classification) or the MLM transform and its decoder (tied to the word
embeddings). Position and token-type embeddings are analyzed but not paired."""

from specdyn.arch.base import Attention, Family, Stack

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    stacks=(
        Stack(
            blocks=r"layer\.\d+\.",
            attention=(
                Attention(
                    q="attention.self.query",
                    k="attention.self.key",
                    v="attention.self.value",
                    o="attention.output.dense",
                ),  # fmt: skip
            ),
            mlp_in=("intermediate.dense",),
            mlp_out="output.dense",
            embed=("word_embeddings",),
        ),
    ),
    heads_chains=(("pooler.dense", "classifier"), ("cls.predictions.transform.dense", "cls.predictions.decoder")),
)
