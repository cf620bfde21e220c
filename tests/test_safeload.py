"""The safe pickle policy: weights_only plus inert types, refusal with the globals named, --trust-pickle."""

from __future__ import annotations

import argparse
import collections
import functools
import io
import os
import pickle
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from specdyn.errors import EXIT_UNSAFE_PICKLE, CheckpointError, UnsafePickleError
from specdyn.io import CheckpointReader, discover, open_checkpoint
from specdyn.io.safeload import (
    peek_pickle,
    read_dcp_metadata,
    safe_load_bytes,
    safe_torch_load,
)
from tests.ckpt_fixtures import tiny_state, truncate, write_dcp, write_torch


class RunsShell:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class WritesFile:
    """Unpickling this would execute Python that writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


class Custom:
    """A harmless user class: not on any allowlist, loadable only with trust."""

    def __init__(self, value):
        self.value = value


@pytest.fixture(params=[RunsShell, WritesFile])
def evil(request, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "step_100.pt"
    torch.save({"state_dict": tiny_state(0), "payload": request.param(marker), "step": 100}, path)
    return path, marker


def test_code_running_pickle_is_refused_and_nothing_runs(evil, monkeypatch):
    path, marker = evil
    # torch honours this only where the caller leaves weights_only unset; we never do.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UnsafePickleError) as err:
        safe_torch_load(path)
    assert err.value.code == EXIT_UNSAFE_PICKLE
    message = err.value.message
    assert str(path) in message and "--trust-pickle" in message
    assert "posix.system" in message or "builtins.exec" in message
    assert "\n" not in message
    with pytest.raises(UnsafePickleError):
        CheckpointReader(open_checkpoint(path))
    assert not marker.exists()


def test_discovery_peeks_without_running_anything(evil):
    path, marker = evil
    (ckpt,) = discover(path.parent)
    assert ckpt.step == 100  # read from the pickle's plain values
    assert not marker.exists()


def test_allowlisted_inert_types_load(tmp_path):
    path = tmp_path / "hp.pt"
    hp = {
        "args": argparse.Namespace(width=4, data=Path("/data"), pure=PurePosixPath("x/y")),
        "np_scalar": np.float64(1.5),
        "np_int": np.int64(3),
        "np_array": np.arange(3, dtype=np.float32),
        "np_dtype": np.dtype("float16"),
        "counts": collections.defaultdict(int, a=2),
        "ordered": collections.OrderedDict(b=1),
        "misc": {1, 2},
    }
    torch.save({"state_dict": tiny_state(0), "hyper_parameters": hp}, path)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert "argparse.Namespace" in unsafe and "collections.defaultdict" in unsafe  # torch alone refuses this file
    got = safe_torch_load(path)["hyper_parameters"]
    assert got["args"] == hp["args"]
    assert got["np_scalar"] == 1.5 and got["np_int"] == 3 and got["np_dtype"] == np.dtype("float16")
    np.testing.assert_array_equal(got["np_array"], hp["np_array"])
    assert got["counts"] == {"a": 2}  # rebuilt as a plain dict: torch cannot fill a defaultdict
    assert got["ordered"] == hp["ordered"] and got["misc"] == {1, 2}


def test_omegaconf_containers_load():
    omegaconf = pytest.importorskip("omegaconf")
    buf = io.BytesIO()
    cfg = omegaconf.OmegaConf.create({"lr": 0.1, "layers": [1, 2], "nested": {"a": True, "b": None}})
    torch.save({"hyper_parameters": cfg}, buf)
    got = safe_load_bytes(buf.getvalue(), "cfg.pt")["hyper_parameters"]
    assert omegaconf.OmegaConf.to_container(got) == {"lr": 0.1, "layers": [1, 2], "nested": {"a": True, "b": None}}


@pytest.mark.parametrize(
    "value, name",
    [
        (functools.partial(int, base=2), "functools.partial"),  # can call anything: not inert
        (Custom(3), "test_safeload.Custom"),
    ],
)
def test_non_allowlisted_globals_are_refused_by_name(tmp_path, value, name):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2), "extra": value}, path)
    with pytest.raises(UnsafePickleError) as err:
        safe_torch_load(path)
    assert name in err.value.message


def test_trust_pickle_loads_a_custom_class(tmp_path):
    path = tmp_path / "step_3.pt"
    torch.save({"model": tiny_state(3), "meta": Custom(7), "step": 3}, path)
    with pytest.raises(UnsafePickleError, match="Custom"):
        safe_torch_load(path)
    assert safe_torch_load(path, trust_pickle=True)["meta"].value == 7
    with CheckpointReader(open_checkpoint(path), trust_pickle=True) as reader:
        assert reader.shape("head.weight") == (8, 4)


def test_legacy_files_load_without_mmap_and_are_checked_too(tmp_path, monkeypatch):
    sd = tiny_state(1)
    write_torch(tmp_path / "legacy.pt", {"state_dict": sd, "args": argparse.Namespace(a=1)}, legacy=True)
    got = safe_torch_load(tmp_path / "legacy.pt")
    assert got["args"].a == 1 and torch.equal(got["state_dict"]["head.weight"], sd["head.weight"])
    marker = tmp_path / "marker"
    write_torch(tmp_path / "evil.pt", {"x": WritesFile(marker)}, legacy=True)
    with pytest.raises(UnsafePickleError, match="builtins.exec"):
        safe_torch_load(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_torch_files_are_checkpoint_errors(tmp_path, legacy):
    path = tmp_path / "step_5.pt"
    write_torch(path, tiny_state(5), legacy=legacy)
    truncate(path)
    with pytest.raises(CheckpointError, match="step_5.pt: cannot read checkpoint, it may be truncated or corrupt"):
        safe_torch_load(path)


def test_peek_reads_plain_values_without_importing():
    # Hand-assembled protocol-4 pickle: {"step": "ten", "iter": 7, "x": definitely_not_a_mod.Thing(),
    # "y": posix.system("touch")}. Real unpickling would fail to import the first and run the second.
    payload = (
        b"\x80\x04}(\x8c\x04step\x8c\x03ten\x8c\x04iterK\x07"
        b"\x8c\x01x\x8c\x14definitely_not_a_mod\x8c\x05Thing\x93)R"
        b"\x8c\x01y\x8c\x05posix\x8c\x06system\x93\x8c\x05touch\x85Ru."
    )
    value, named = peek_pickle(io.BytesIO(payload))
    assert value["iter"] == 7 and value["step"] == "ten"
    assert named == ["definitely_not_a_mod.Thing", "posix.system"]
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(payload.replace(b"posix", b"posiz"))  # proves the payload is what the comment says


def test_peek_on_a_real_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny_state(0), "iter_num": 250, "config": {"lr": 0.1}}, path)
    value, named = peek_pickle(path)
    assert value["iter_num"] == 250 and value["config"] == {"lr": 0.1}
    assert "torch._utils._rebuild_tensor_v2" in named


def test_dcp_metadata_with_foreign_globals_is_refused(tmp_path):
    write_dcp(tmp_path / "dcp", {"model": dict(tiny_state(0))})
    metadata = read_dcp_metadata(tmp_path / "dcp")
    assert "model.head.weight" in metadata.state_dict_metadata
    marker = tmp_path / "marker"
    with open(tmp_path / "dcp" / ".metadata", "wb") as f:
        pickle.dump(RunsShell(marker), f)
    with pytest.raises(UnsafePickleError, match="posix.system"):
        read_dcp_metadata(tmp_path / "dcp")
    assert not marker.exists()


def test_dcp_pickled_items_go_through_the_safe_loader(tmp_path):
    marker = tmp_path / "marker"
    write_dcp(tmp_path / "step-9", {"model": dict(tiny_state(0)), "step": 9, "payload": WritesFile(marker)})
    (ckpt,) = discover(tmp_path)  # only the step item is read
    assert ckpt.step == 9
    with CheckpointReader(ckpt) as reader:
        assert reader.shape("head.weight") == (8, 4)
        assert torch.equal(reader.tensor("head.weight"), tiny_state(0)["head.weight"])
        with pytest.raises(UnsafePickleError, match="builtins.exec"):
            reader.metadata()
    assert not marker.exists()


def test_truncated_dcp_item_names_the_data_file(tmp_path):
    write_dcp(tmp_path / "dcp", {"model": dict(tiny_state(0))})
    data = next((tmp_path / "dcp").glob("*.distcp"))
    truncate(data)
    with CheckpointReader(open_checkpoint(tmp_path / "dcp")) as reader:
        with pytest.raises(CheckpointError, match=data.name):
            reader.tensor("head.weight")
