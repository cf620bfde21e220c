"""Stores of many matrices (issue 18: a 256-expert model has ~46,000) pack them by shape into zarr shards, and
any tensor name is stored under a safe key (issue 17 item 13). Both read back exactly what the per-matrix layout
holds."""

import json

import numpy as np
import pytest
import zarr
from safetensors.numpy import save_file

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze, compute
from specdyn.store import layout

OPTS = dict(svd_route="gram", topk=3)


def expert_series(run, n: int = 12, steps=(0, 10, 20), names=None):
    """An MoE-like series: n experts of two shapes each (and any extra names), weights drifting by step."""
    run.mkdir(parents=True, exist_ok=True)
    names = names or [f"experts.{e}.{p}.weight" for e in range(n) for p in ("up", "down")]
    rng = np.random.default_rng(0)
    base = {k: rng.standard_normal((6, 4) if "down" not in k else (4, 6)).astype(np.float32) for k in names}
    for step in steps:
        sd = {k: v + 0.1 * step * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
        meta = {"step": str(step), "param_order": json.dumps(names)}
        save_file(sd, str(run / f"step_{step}.safetensors"), metadata=meta)
    return names


def same(a, b):
    A, B = specdyn.open_store(a), specdyn.open_store(b)
    assert A.matrices == B.matrices and list(A.steps) == list(B.steps)
    for name in A.matrices:
        for what in ("sv", "U", "V"):
            np.testing.assert_array_equal(getattr(A, what)(name), getattr(B, what)(name), err_msg=f"{name} {what}")
    for metric in ("effective_rank", "alpha", "stability_score", "subspace_overlap"):
        np.testing.assert_array_equal(A.metric(metric), B.metric(metric), err_msg=metric)
    np.testing.assert_array_equal(A.alignment(), B.alignment())


def files(store):
    return sum(1 for p in store.rglob("*") if p.is_file())


def test_packed_store_reads_as_the_per_matrix_store(tmp_path, monkeypatch):
    run = tmp_path / "run"
    expert_series(run)
    analyze([run], tmp_path / "groups.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    monkeypatch.setattr(layout, "PACK_ABOVE", 0)
    monkeypatch.setattr(layout, "SHARD_BYTES", 4 * 6 * 3 * 5)  # shards of 4 experts (12 a shape), chunks of 2
    monkeypatch.setattr(layout, "INNER_BYTES", 4 * 6 * 3 * 2)
    analyze([run], tmp_path / "packed.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    same(tmp_path / "groups.zarr", tmp_path / "packed.zarr")
    assert not (tmp_path / "packed.zarr" / "matrices").exists()
    U = zarr.open_group(str(tmp_path / "packed.zarr"), mode="r")["svd/6x4/U"]
    assert U.shards[:2] == (1, 4) and U.chunks[:2] == (1, 2)
    assert sorted(p.name for p in (tmp_path / "packed.zarr" / "svd").iterdir()) == ["4x6", "6x4", "zarr.json"]
    assert files(tmp_path / "packed.zarr") < files(tmp_path / "groups.zarr") / 2
    # a row inserted between two (a rebuild), its matrices written as computed (past the spill budget)
    expert_series(tmp_path / "more", steps=(5,))
    (run / "step_5.safetensors").write_bytes((tmp_path / "more" / "step_5.safetensors").read_bytes())
    monkeypatch.setattr(compute, "SPILL_BYTES", 0)
    analyze([run], tmp_path / "packed.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    monkeypatch.setattr(layout, "PACK_ABOVE", 1024)
    analyze([run], tmp_path / "groups.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    same(tmp_path / "groups.zarr", tmp_path / "packed.zarr")


BAD = [".", "..", "a/../../b", "zarr.json", "x" * 300, "c/d.weight", "ü.weight", ".hidden", "ok.weight"]


@pytest.mark.parametrize("packed", [False, True])
def test_any_tensor_name_is_stored_under_a_safe_key(tmp_path, monkeypatch, packed):
    if packed:
        monkeypatch.setattr(layout, "PACK_ABOVE", 0)
    run = tmp_path / "deep" / "run"
    expert_series(run, names=BAD, steps=(0, 10))
    analyze([run], options=AnalyzeOptions(**OPTS), show_progress=False)
    st = specdyn.open_store(run)
    assert st.matrices == BAD and st.sv("a/../../b").shape == (2, 4)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["run"]  # nothing written beside the run
    assert sorted(p.name for p in run.iterdir() if not p.name.endswith(".safetensors")) == [
        ".specdyn.zarr.lock",
        "specdyn.zarr",
    ] or sorted(p.name for p in run.iterdir() if not p.name.endswith(".safetensors")) == ["specdyn.zarr"]
    keys = [p.name for p in (run / "specdyn.zarr" / ("svd" if packed else "matrices")).iterdir()]
    assert all(len(k.encode()) <= 255 and k not in (".", "..") and "/" not in k for k in keys)
    assert "ok.weight" in keys or packed
