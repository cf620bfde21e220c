"""Shared test set-up: keep measured SVD route choices out of the user's home directory; `one_thread` for
modules that train tiny models; the session fails if a test leaves a process running (tests/leftovers.py)."""

import pytest
import torch

from tests import leftovers

_started: list[tuple[int, str]] = []  # (start in /proc ticks, test id): which test a leftover came from


def pytest_runtest_logstart(nodeid, location):
    _started.append((leftovers.now_ticks(), nodeid))


@pytest.fixture(scope="session", autouse=True)
def _no_process_left():
    """Set up first, torn down last: every process a test started (or orphaned: pytest adopts them) must be gone
    by the end of the session; any still running is killed, and named in the failure."""
    leftovers.adopt_orphans()
    yield
    left = leftovers.kill_leftovers(_started)
    if left:
        pytest.fail("the tests left processes running (now killed):\n" + "\n".join(left), pytrace=False)


@pytest.fixture(autouse=True)
def _route_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPECDYN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "specdyn-cache"))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny GPT-NeoX trained for 40 steps by the real HF Trainer: checkpoint-8 ... checkpoint-40 (see
    tests/hub_fixtures.py); shared by the hub cache and fetch tests."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    from tests.hub_fixtures import train_with_trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_with_trainer(tmp_path_factory.mktemp("trainer") / "run")
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def forkserver():
    """A forkserver that has imported specdyn: tests fork analyze runs from it to kill them at named points."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", "tests.fault_child"])
    yield ctx
    from multiprocessing import forkserver as fs

    fs._forkserver._stop()  # no server left running; a child it forked and did not end is then a leftover


@pytest.fixture
def killed_analyze(forkserver):
    """Run analyze in a child process that SIGKILLs itself at a fault point (specdyn.store.faults); returns
    its exit code (-9 when the point was reached)."""
    from tests import fault_child

    def run(run_dirs, store, fault: str, **options) -> int:
        child = forkserver.Process(
            target=fault_child.main, args=([str(d) for d in run_dirs], str(store), fault, options)
        )
        child.start()
        child.join(120)
        return child.exitcode

    return run
