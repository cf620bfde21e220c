"""The architecture layer: what specdyn knows of a model beyond its tensors' names and shapes.

`describe` turns a checkpoint's tensor shapes and metadata into a `Structure`: the matrices in depth order with
their kind and orientation (a fused q/k/v projection with its row layout), tied aliases analyzed once, tensors
refused as matrices, the head counts and the neighbour pairs in forward order. It uses the model's own
definition where it can (a Hugging Face config.json and transformers: the model built on the meta device), a
family module per architecture (specdyn.arch.registry), and otherwise falls back to names and shapes, saying so.
See docs/architectures.md.
"""

from specdyn.arch.structure import GUESSED, Structure, describe

__all__ = ["GUESSED", "Structure", "describe"]
