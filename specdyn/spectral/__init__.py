"""The spectral maths, pure functions of arrays that never touch a store: tensors to matrices (`matrices`), SVDs
(`svd`), per-spectrum and between-checkpoint measurements (`metrics`), neighbour-layer pairs (`pairs`) and whole
rows of results (`rows`). docs/method.md defines every number."""
