"""Fault injection: analyze is killed (SIGKILL) at every write boundary of a small series, one boundary per run,
and each time the next run must leave a store equal, array for array, to a clean run's.

The boundaries are the `specdyn.store.faults.point` calls: every place where a kill can leave the store in a
new state (creation built and swapped in, each array of a row, `done`, identities, resizes, every array the
rebuild copies, each step of a swap, derived arrays, attributes, consolidation). Scenario "create" starts from
nothing; scenario "grow" starts from a store of steps 0 and 20 and adds 10 (a rebuild) and 30.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr
from safetensors.torch import save_file

import specdyn
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.errors import SpecdynError
from specdyn.store import faults
from tests import fault_child

OPTIONS = {"svd_route": "gram", "topk": 4}


def tiny_checkpoint(run, step):
    g = torch.Generator().manual_seed(step)
    sd = {"a.weight": torch.randn(6, 5, generator=g), "b.weight": torch.randn(3, 6, generator=g)}
    save_file(sd, str(run / f"step_{step}.safetensors"), metadata={"step": str(step)})


def everything(store) -> dict:
    """Every array (all rows) and every attribute but the time of the last write."""
    root = zarr.open_group(str(store), mode="r")
    out = {}

    def walk(g, prefix):
        for name, arr in g.arrays():
            out[prefix + name] = arr[...]
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(root, "")
    attrs = dict(root.attrs["specdyn"])
    attrs.pop("updated")
    out["attrs"] = attrs
    return out


def assert_equal(a, b, where):
    assert a.keys() == b.keys(), where
    for k in a:
        if k == "attrs":
            assert a[k] == b[k], where
        elif a[k].dtype.kind in "fc":
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{where}: {k}")
        else:
            assert [str(x) for x in np.ravel(a[k])] == [str(x) for x in np.ravel(b[k])], f"{where}: {k}"


def boundaries(run, store, monkeypatch) -> list[str]:
    """The names of the boundaries a clean run passes, in order."""
    seen = []
    monkeypatch.setattr(faults, "handler", seen.append)
    analyze([run], store, AnalyzeOptions(**OPTIONS), show_progress=False)
    monkeypatch.setattr(faults, "handler", None)
    return seen


def reset(tmp, store, template=None):
    for p in tmp.iterdir():
        if p.name.startswith(store.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if template is not None:
        shutil.copytree(template, store)


def kill_at_each(forkserver, tmp, run, store, names, clean, template=None):
    """Kill analyze at boundary 1, 2, ... (each kill in a folder of its own beside `tmp`, the store named as `store`), rerun it,
    compare with `clean`. The child for boundary k+1 runs while store k is recovered: both mostly wait on zarr's
    I/O thread, so the two overlap (the test's wall time nearly halves on a busy machine)."""

    def killed(k):
        work = Path(tempfile.mkdtemp(prefix=f"kill{k}-", dir=tmp.parent))  # beside `tmp`: sources are relative
        at = work / store.name
        if template is not None:
            shutil.copytree(template, at)
        child = forkserver.Process(target=fault_child.main, args=([str(run)], str(at), f"#{k}", OPTIONS))
        child.start()
        return child, at

    pending = killed(1)
    try:
        for k in range(1, len(names) + 1):
            child, at = pending
            child.join(120)
            pending = killed(k + 1) if k < len(names) else None
            where = f"killed at boundary {k} ({names[k - 1]})"
            assert child.exitcode == -9, where
            try:  # what a kill leaves is readable, or refused in one line: never a KeyError
                specdyn.open_store(at)
            except SpecdynError:
                pass
            analyze([run], at, AnalyzeOptions(**OPTIONS), show_progress=False)
            assert_equal(everything(at), clean, where)
            left = [p.name for p in at.parent.iterdir() if p.name.startswith(at.name) and p.name != at.name]
            assert left == [], where  # no side folder (the lock lives beside the store as a hidden file)
            assert not list(at.rglob("*.partial")), where
            shutil.rmtree(at.parent)
    finally:
        if pending is not None:  # a failed check: stop the child already started
            pending[0].kill()
            pending[0].join()


def test_kill_at_every_write_boundary(tmp_path, forkserver, monkeypatch):
    run, work = tmp_path / "run", tmp_path / "work"
    run.mkdir()
    work.mkdir()
    for step in (0, 20):
        tiny_checkpoint(run, step)
    store = work / "s.zarr"

    # scenario "create": from nothing
    names = boundaries(run, store, monkeypatch)
    assert {"create:built", "swap:complete", "swap:new-live", "row:done", "derive", "attrs"} <= set(names)
    clean = everything(store)
    template = tmp_path / "template.zarr"
    shutil.copytree(store, template)
    kill_at_each(forkserver, work, run, store, names, clean)

    # scenario "grow": a checkpoint between stored ones (rebuild) and one after them
    for step in (10, 30):
        tiny_checkpoint(run, step)
    reset(work, store, template)
    names = boundaries(run, store, monkeypatch)
    assert {"rebuild:row", "rebuild:built", "swap:old-aside", "row:done"} <= set(names)
    clean = everything(store)
    kill_at_each(forkserver, work, run, store, names, clean, template)
