"""Work below a checkpoint: matrices spread over workers (written by them, or sent back), and a real Dask
deployment (scheduler and worker processes on 127.0.0.1) that survives a killed worker; each store must equal a
serial run's array for array."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import specdyn.analyze.compute as compute
import specdyn.store.writing as writing
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.spectral.matrices import MatrixSpec
from tests.series import write_series

OPTS = dict(svd_route="gram")  # one pinned route: every run computes each matrix the same way


def arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path."""
    root = zarr.open_group(str(store), mode="r")
    return {path: arr[...] for path, arr in root.arrays()} | {
        f"{g}/{path}": arr[...] for g, grp in root.groups() for path, arr in grp.arrays()
    }


def assert_identical(a: Path, b: Path):
    x, y = arrays(a), arrays(b)
    assert x.keys() == y.keys() and len(x) > 10
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture
def run(tmp_path):
    write_series(tmp_path / "run")
    analyze([tmp_path / "run"], tmp_path / "serial.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    return tmp_path / "run"


def test_units_balance_cost_and_cover_every_matrix_once():
    specs = [MatrixSpec(f"m{i}", shape, "linear") for i, shape in enumerate([(64, 64), (8, 8), (64, 64), (8, 8)])]
    groups = compute.units(specs, 2)
    assert sorted(j for g in groups for j in g) == [0, 1, 2, 3]
    assert [0, 2] not in groups and all(g == sorted(g) for g in groups)  # the two big ones are split up
    assert sorted(map(tuple, compute.units(specs, 10))) == [(0,), (1,), (2,), (3,)]  # at most one unit a matrix
    assert compute.units(specs, 1) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("budget", [0, 6_000])  # every matrix written through; the first ones held (of 14 kB)
def test_spectra_written_through_past_the_budget_equal_holding_them(run, tmp_path, monkeypatch, budget):
    """Past SPILL_BYTES of held singular vectors a row's further matrices go to the store as computed and the
    alignment pairs read them back: the store is the same array for array."""
    monkeypatch.setattr(compute, "SPILL_BYTES", budget)
    spilled = []
    real = writing.RowWriter.matrix
    monkeypatch.setattr(
        writing.RowWriter, "matrix", lambda self, i, name, sp: (spilled.append(name), real(self, i, name, sp))
    )
    analyze([run], tmp_path / "spilled.zarr", AnalyzeOptions(**OPTS), show_progress=False)
    assert_identical(tmp_path / "serial.zarr", tmp_path / "spilled.zarr")
    assert spilled and (len(spilled) == 5 * 6 if budget == 0 else len(spilled) < 5 * 6)


@pytest.mark.parametrize("shared", [True, False])
def test_matrices_spread_over_workers_equal_serial(run, tmp_path, monkeypatch, shared):
    monkeypatch.setattr(compute, "UNITS_PER_SLOT", 100)  # every matrix its own unit
    if not shared:  # workers cannot see the marker: every matrix travels back to this process

        @contextlib.contextmanager
        def unseen(store):
            yield "not-a-marker-any-worker-sees"

        monkeypatch.setattr(compute, "shared_marker", unseen)
    written = []  # matrices this process writes: those that came back from the workers (and the first row,
    real = writing.RowWriter.matrix_values  # which this process computes itself to measure the SVD routes)
    monkeypatch.setattr(writing.RowWriter, "matrix_values", lambda self, *a: (written.append(a[0]), real(self, *a))[1])
    analyze([run], tmp_path / "par.zarr", AnalyzeOptions(workers=2, **OPTS), show_progress=False)
    assert_identical(tmp_path / "serial.zarr", tmp_path / "par.zarr")
    assert not list((tmp_path / "par.zarr").glob(".specdyn-workers-*"))  # the marker is removed
    # nothing is written here when the workers wrote it themselves
    assert len(written) == (6 if shared else 5 * 6)  # 5 checkpoints x 6 matrices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the Dask scheduler exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("Dask scheduler did not start")


def test_dask_scheduler_and_workers_survive_a_killed_worker(run, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from distributed import Client

    monkeypatch.setattr(compute, "UNITS_PER_SLOT", 100)
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), SPECDYN_CACHE_DIR=str(tmp_path / "cache"))
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [
        subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"], env=env)
    ]
    try:
        _wait_for_port(port, procs[0])
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nthreads", "1", "--no-nanny"]
        worker += ["--host", "127.0.0.1", "--dashboard-address", ":0", "--preload", "tests.dask_slow_preload"]
        for _ in range(2):  # 2 workers x 1 thread: never more than this machine's cores (2 or more)
            procs.append(subprocess.Popen(worker, env=env, cwd=Path(__file__).parents[1]))
        with Client(addr, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            victim = procs[1]
            [victim_addr] = [w for w, pid in client.run(os.getpid).items() if pid == victim.pid]
            killer_done = []

            def kill_when_busy():
                with Client(addr, timeout=60) as c:
                    while True:  # the victim holds a task: kill it mid-run
                        if c.processing().get(victim_addr):
                            victim.send_signal(signal.SIGKILL)
                            killer_done.append(True)
                            return
                        time.sleep(0.05)

            import threading

            t = threading.Thread(target=kill_when_busy, daemon=True)
            t.start()
            summary = analyze([run], tmp_path / "dask.zarr", AnalyzeOptions(dask=addr, **OPTS), show_progress=False)
            t.join(timeout=5)
        assert killer_done and victim.wait(timeout=10) == -signal.SIGKILL
        assert summary["computed"] == 5
        assert_identical(tmp_path / "serial.zarr", tmp_path / "dask.zarr")
    finally:
        stop_all(procs)


def stop_all(procs, grace: float = 10.0) -> None:
    """Terminate, then kill what has not exited after `grace` seconds: a Dask worker that ignores SIGTERM must not
    outlive the suite."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.time()))
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_processes_that_ignore_sigterm_are_killed():
    """The Dask test's clean-up: a process ignoring SIGTERM is killed, not left running after the suite."""
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    t0 = time.time()
    stop_all([p], grace=0.5)
    assert p.returncode == -signal.SIGKILL and time.time() - t0 < 10


def test_task_threads_share_the_cores_of_a_host(monkeypatch):
    import torch
    from threadpoolctl import threadpool_info

    class FakeWorker:
        address = "tcp://10.0.0.2:40123"

    import distributed

    monkeypatch.setattr(distributed, "get_worker", lambda: FakeWorker())
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert compute._dask_task_threads({"10.0.0.2": 4, "10.0.0.3": 1}) == 2  # 4 tasks at once share 8 cores
    assert compute._dask_task_threads({"10.0.0.2": 16}) == 1
    assert compute._dask_task_threads(None) is None  # local workers: their pool already set the threads
    before = torch.get_num_threads()
    with compute._blas_threads(1):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before


def test_safetensors_tensors_read_without_the_memory_map_equal_the_librarys(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from specdyn.io.safetensors_file import SafetensorsSource

    sd = {
        "bf16": torch.randn(5, 7).bfloat16(),
        "f16": torch.randn(3, 2, 2).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }
    sd |= {"f8": torch.randn(4, 3).to(torch.float8_e4m3fn), "f64": torch.randn(2, 3).double()}
    save_file(sd, str(tmp_path / "x.safetensors"))
    src = SafetensorsSource.file(tmp_path / "x.safetensors")
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        for k in sd:
            ours, theirs = src.tensor(k), f.get_tensor(k)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and torch.equal(ours, theirs), k
            assert src.dtype_name(k) == str(theirs.dtype).removeprefix("torch.")
            # the torch-free read analyze uses: numpy, bfloat16 widened to float32 exactly; float8 left to torch
            arr = src.array(k)
            if k == "f8":
                assert arr is None
                continue
            want = theirs.float() if k == "bf16" else theirs
            assert arr.shape == tuple(theirs.shape) and np.array_equal(arr, want.numpy()), k
            assert arr.dtype == (np.float32 if k == "bf16" else want.numpy().dtype), k


def test_bfloat16_is_widened_piece_by_piece_and_a_short_file_is_refused(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    import specdyn.io.safetensors_file as st
    from specdyn.errors import CheckpointError

    w = torch.randn(37, 11).bfloat16()
    save_file({"w": w, "z": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    for piece in (6, 22, 64, 1 << 20):  # many pieces with a remainder, one exact, one for all
        monkeypatch.setattr(st, "WIDEN_BYTES", piece)
        got = st.SafetensorsSource.file(tmp_path / "x.safetensors").array("w")
        assert np.array_equal(got, w.float().numpy()), piece
    raw = (tmp_path / "x.safetensors").read_bytes()
    header = st._header(tmp_path / "x.safetensors")
    begin, end = header[1]["w"]["data_offsets"]  # the same header over a file that ends inside w's data
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: header[0] + begin + (end - begin) // 2])
    monkeypatch.setattr(st, "WIDEN_BYTES", 64)
    with pytest.raises(CheckpointError, match="truncated"):
        st._pread_array(cut, "w", header)


def test_analyze_of_safetensors_does_not_import_torch(tmp_path):
    """Start-up counts on short series: a safetensors series is read, decomposed and stored without torch (1.4 s
    of CPU to import), on the routes that do not need it."""
    import subprocess
    import sys

    from tests.series import write_series

    run = tmp_path / "run"
    write_series(run, steps=(0, 10), mutate=lambda step, sd: sd.update({k: v.bfloat16() for k, v in sd.items()}))
    code = (
        "import sys; from specdyn.analyze import analyze, AnalyzeOptions;"
        f"analyze([{str(run)!r}], {str(tmp_path / 's.zarr')!r}, AnalyzeOptions(svd_route='gram'), show_progress=False);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_finite_is_exact():
    from specdyn.spectral.svd import all_finite

    W = np.full((100, 10), np.finfo(np.float32).max, np.float32)  # a float32 sum would overflow
    assert all_finite(W)
    for bad in (np.nan, np.inf, -np.inf):
        V = W.copy()
        V[3, 4] = bad
        assert not all_finite(V)
    V = W.copy()
    V[0, 0], V[0, 1] = np.inf, -np.inf
    assert not all_finite(V)
