"""docs/store.md is a contract: every array and attribute it documents is what analyze writes, and vice versa."""

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.store import METRICS
from specdyn.store.layout import BASE_METRICS
from tests.series import write_series

DOC = Path(__file__).resolve().parents[1] / "docs" / "store.md"
DTYPES = {"int64": "int64", "int16": "int16", "bool": "bool", "float32": "float32", "float64": "float64"}


def documented_tables() -> dict[str, dict[str, tuple[tuple[str, ...], str]]]:
    """{section title: {array: (dims, dtype)}} from the markdown tables whose columns are array | dims | dtype."""
    sections, title, out = DOC.read_text().split("\n## "), None, {}
    for section in sections:
        title = section.splitlines()[0]
        rows = re.findall(r"^\| `(\w+)` \| \(([^)]*)\) \| (\w+) \|", section, flags=re.M)
        if rows:
            out[title] = {name: (tuple(d.strip() for d in dims.split(",")), dtype) for name, dims, dtype in rows}
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    write_series(tmp / "run", steps=(0, 10, 20))
    analyze([tmp / "run"], options=AnalyzeOptions(svd_route="gram"), show_progress=False)
    return zarr.open_group(str(tmp / "run" / "specdyn.zarr"), mode="r")


def check(arr, dims, dtype):
    assert tuple(arr.metadata.dimension_names) == dims
    if dtype == "string":
        assert arr.dtype.kind in "TUO"
    else:
        assert arr.dtype == np.dtype(DTYPES[dtype])
    if dims[0] == "checkpoint":  # one checkpoint per chunk
        assert arr.chunks[0] == 1


def test_documented_arrays_are_written(store):
    tables = documented_tables()
    assert set(tables) >= {"Per-checkpoint coordinates", "Vector-based arrays", "`matrices/<name>/`: the SVD itself"}
    root_arrays = {**tables["Per-checkpoint coordinates"], **tables["Vector-based arrays"]}
    for name, (dims, dtype) in root_arrays.items():
        check(store[name], dims, dtype)
    for name in store["matrix"][:]:
        for array, (dims, dtype) in tables["`matrices/<name>/`: the SVD itself"].items():
            check(store[f"matrices/{name}/{array}"], dims, dtype)


def test_documented_metrics_are_written_and_nothing_else(store):
    doc = DOC.read_text()
    section = doc.split("## Metrics")[1].split("\n## ")[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert documented == [m for m in METRICS if m not in BASE_METRICS]  # those: only with a base model
    for name in documented:
        check(store[name], ("checkpoint", "matrix"), "float64")
    # every root array is documented somewhere
    t = documented_tables()
    tables = set(t["Per-checkpoint coordinates"]) | set(t["Vector-based arrays"])
    undocumented = {n for n in store.array_keys()} - tables - set(documented) - {"matrix", "pair"}
    assert not undocumented


def test_documented_attributes(store):
    doc = DOC.read_text().split("## Root attributes")[1].split("\n## ")[0]
    keys = set(re.findall(r"^\| `(\w+)` \|", doc, flags=re.M))
    attrs = store.attrs["specdyn"]
    assert set(attrs) <= keys, set(attrs) - keys
    assert {"schema_version", "specdyn_version", "top", "options", "sources", "skipped"} <= set(attrs)
    assert set(store["matrix"].attrs) == {"shapes", "original_shapes", "kinds", "orientation", "fused", "expert", "cut"}
    assert {p["kind"] for p in store["pair"].attrs["pairs"]} <= {"plain", "embedding", "vo", "qk", "lstm_gate"}
