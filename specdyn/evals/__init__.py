"""Model-based evaluations: low-rank pruning over training, linear interpolation between checkpoints, and
lottery-ticket masks against the SVD (docs/method.md 1.9, 1.10, 2, 3; docs/evaluations.md).

`taskload` finds the task (model + data + evaluation) for a checkpoint and loads weights into one model
instance; `lowrank` holds the pruning maths; `spectra` reads singular vectors from the store or computes one SVD;
`variants` evaluates edited copies of a model; `results` writes result groups into a zarr store safely;
`prune`, `interpolate` and `lottery` are the three evaluations.
"""
