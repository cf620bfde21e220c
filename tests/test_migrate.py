"""The one store migration: a metric declared once in spectral/metrics.py reaches an existing store (read from the
stored singular values before `derive`, stored by it, then written with every new row), never a KeyError."""

import json
import subprocess
import sys
from pathlib import Path

from tests.test_schema1 import schema1_run

ROOT = Path(__file__).resolve().parents[1]

# The whole recipe of docs/architecture.md "Add a metric of a spectrum", step 1: one Metric in METRICS. Done here
# before anything else imports the registry, as an edit of spectral/metrics.py would be.
SCRIPT = """
import json, sys
import numpy as np
from specdyn.spectral import metrics as m

m.METRICS["top2_ratio"] = m.Metric(
    "top2_ratio", "σ₂ / σ₁", "[0, 1]", m.METRICS["spectral_norm"].doc, unit=True, fn=lambda s: s[..., 1] / s[..., 0]
)

import specdyn, zarr
from specdyn.commands.derive import derive_store

run = sys.argv[1]
expect = lambda st: np.array([[st.sv(n)[i, 1] / st.sv(n)[i, 0] for n in st.matrices] for i in range(len(st))])
old = specdyn.open_store(run)
out = {"read_before": bool(np.allclose(old.metric("top2_ratio"), expect(old)))}
out["stored_before"] = "top2_ratio" in zarr.open_group(run + "/specdyn.zarr", mode="r")
derive_store(run)
root = zarr.open_group(run + "/specdyn.zarr", mode="r")
new = specdyn.open_store(run)
out["stored_after"] = bool(np.allclose(root["top2_ratio"][:], expect(new)))
out["unfilled"] = root.attrs["specdyn"].get("unfilled")
from specdyn.spectral.rows import RowComputer
from specdyn.spectral.svd import SVDEngine
W = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
spec = new.matrix_spec(new.matrices[0])
row = RowComputer([spec], [], 4, None, SVDEngine(top=4, route="gram", cache=False))([(spec, W)])
s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
out["written_with_rows"] = bool(np.isclose(row.metrics["top2_ratio"][0], s[1] / s[0]))
print(json.dumps(out))
"""


def test_a_metric_declared_once_reaches_an_old_store(tmp_path):
    run = schema1_run(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(run)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {
        "read_before": True,
        "stored_before": False,
        "stored_after": True,
        "unfilled": [],
        "written_with_rows": True,
    }


def test_a_rerun_opens_the_store_once(tmp_path, monkeypatch):
    """Issue 21: analyze opens an existing store's root group once (the Store it hands on), not once per check."""
    import zarr

    from specdyn.analyze import AnalyzeOptions, analyze

    run = schema1_run(tmp_path)
    store = run / "specdyn.zarr"
    opened = []
    real = zarr.open_group

    def counting(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(zarr, "open_group", counting)
    analyze([run], options=AnalyzeOptions(topk=12), show_progress=False)
    assert opened.count(str(store)) == 1, opened
