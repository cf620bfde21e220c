"""Checkpoint discovery and reading, on series written by each format's own library."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from specdyn.errors import EXIT_NO_CHECKPOINTS, EXIT_NOT_FOUND, SpecdynError
from specdyn.io import (
    Checkpoint,
    CheckpointError,
    CheckpointReader,
    discover,
    natural_key,
    open_checkpoint,
    step_from_name,
    strip_prefixes,
)
from tests.ckpt_fixtures import (
    TinyNet,
    tiny_state,
    truncate,
    write_dcp,
    write_hf_checkpoint,
    write_lightning_run,
    write_specdyn_safetensors,
    write_torch,
)

REGISTRATION = list(TinyNet().state_dict())  # conv.*, blocks.0.* ... blocks.10.*, head.*


def read_all(ckpt: Checkpoint, **kwargs) -> OrderedDict:
    with CheckpointReader(ckpt, **kwargs) as reader:
        return OrderedDict((n, reader.tensor(n)) for n in reader.names())


def assert_same(got: dict, want: dict):
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


# --- names and steps ---------------------------------------------------------------------------------------


def test_natural_key_orders_numbers_as_numbers():
    names = ["layers.10.w", "layers.2.w", "layers.1.w", "emb", "layers.2.b"]
    assert sorted(names, key=natural_key) == ["emb", "layers.1.w", "layers.2.b", "layers.2.w", "layers.10.w"]


@pytest.mark.parametrize(
    "raw, name",
    [
        ("module.fc.weight", "fc.weight"),
        ("_orig_mod.fc.weight", "fc.weight"),
        ("module._orig_mod.fc.weight", "fc.weight"),
        ("_orig_mod.module.module.fc.weight", "fc.weight"),
        ("model._orig_mod.fc.weight", "model.fc.weight"),  # compiled submodule of a LightningModule
        ("blocks.0.module.weight", "blocks.0.module.weight"),  # a real attribute called module
        ("model.fc.weight", "model.fc.weight"),  # Lightning's attribute prefix is the module path: kept
    ],
)
def test_strip_prefixes(raw, name):
    assert strip_prefixes(raw) == name


@pytest.mark.parametrize(
    "name, step",
    [
        ("step_100.safetensors", 100),
        ("step=100.pt", 100),
        ("epoch=3-step=250.ckpt", 250),
        ("run-300.pt", 300),
        ("ckpt_2000.pt", 2000),
        ("global_step1500", 1500),
        ("checkpoint-500", 500),
        ("iter_7.pth", 7),
        ("model_ep2_it40.pth", 40),
        ("final.safetensors", None),
        ("ckpt.pt", None),
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def test_lightning_names_only_count_an_explicit_step():
    assert step_from_name("best-epoch=14-val_loss=0.33.ckpt", explicit_only=True) is None
    assert step_from_name("epoch=1-step=40-val_loss=0.33.ckpt", explicit_only=True) == 40


# --- safetensors -------------------------------------------------------------------------------------------


def test_specdyn_safetensors_series(tmp_path):
    written = {
        s: write_specdyn_safetensors(tmp_path / f"step_{s}.safetensors", s, dtype=torch.bfloat16)
        for s in (100, 5, 40, 2000)
    }
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "specdyn.zarr").mkdir()
    (tmp_path / "specdyn.zarr" / "step_1.safetensors").write_text("not read: inside a store")
    (tmp_path / "analyze.lock").write_text("")
    write_specdyn_safetensors(tmp_path / "step_3000.safetensors.tmp", 3000)  # still being written
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "step_100.optim").write_bytes(b"")
    ckpts = discover(tmp_path)
    assert [c.step for c in ckpts] == [5, 40, 100, 2000]
    assert [c.relpath for c in ckpts] == [
        "step_5.safetensors",
        "step_40.safetensors",
        "step_100.safetensors",
        "step_2000.safetensors",
    ]
    assert all(c.format == "safetensors" and c.run_dir == tmp_path.resolve() and c.path.is_absolute() for c in ckpts)
    with CheckpointReader(ckpts[1]) as reader:
        assert reader.names() == REGISTRATION  # param_order metadata, not the file's sorted order
        assert reader.shape("blocks.0.weight") == (4, 8)
        assert reader.shape("conv.weight") == (2, 1, 3, 3)
        assert reader.dtype("head.weight") == torch.bfloat16
        meta = reader.metadata()
    assert meta["step"] == 40 and meta["task"] == "tiny" and meta["config"] == {"width": 4, "lr": 0.1}
    assert meta["param_order"] == REGISTRATION
    assert_same(read_all(ckpts[1]), written[40])


def test_step_from_metadata_wins_over_the_name(tmp_path):
    for name, step in (("a_1.safetensors", 300), ("b_2.safetensors", 100), ("c_3.safetensors", 200)):
        write_specdyn_safetensors(tmp_path / name, step)
    assert [(c.path.name, c.step) for c in discover(tmp_path)] == [
        ("b_2.safetensors", 100),
        ("c_3.safetensors", 200),
        ("a_1.safetensors", 300),
    ]


def test_plain_safetensors_take_the_step_from_the_name_and_sort_names_naturally(tmp_path):
    for i, name in enumerate(["step=20.safetensors", "run-3.safetensors", "x7y12.safetensors"]):
        save_file({f"layers.{j}.weight": torch.full((2, 2), float(i)) for j in (10, 2, 1)}, str(tmp_path / name))
    ckpts = discover(tmp_path)
    assert [(c.path.name, c.step) for c in ckpts] == [
        ("run-3.safetensors", 3),
        ("x7y12.safetensors", 12),
        ("step=20.safetensors", 20),
    ]
    with CheckpointReader(ckpts[0]) as reader:
        assert reader.names() == ["layers.1.weight", "layers.2.weight", "layers.10.weight"]
        assert reader.metadata() == {}
        assert reader.tensor("layers.10.weight")[0, 0] == 1.0


def test_missing_step_names_the_file_and_suggests_order_name(tmp_path):
    write_specdyn_safetensors(tmp_path / "step_1.safetensors", 1)
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "final.safetensors"))
    with pytest.raises(SpecdynError) as err:
        discover(tmp_path)
    assert "final.safetensors" in err.value.message and "--order name" in err.value.message
    ckpts = discover(tmp_path, order="name")
    assert [(c.path.name, c.step) for c in ckpts] == [("final.safetensors", None), ("step_1.safetensors", 1)]


def test_order_name_sorts_naturally_and_fills_steps(tmp_path):
    for name, step in (("b.safetensors", 5), ("a10.safetensors", 1), ("a9.safetensors", 7)):
        write_specdyn_safetensors(tmp_path / name, step)
    ckpts = discover(tmp_path, order="name")
    assert [(c.path.name, c.step) for c in ckpts] == [
        ("a9.safetensors", 7),
        ("a10.safetensors", 1),
        ("b.safetensors", 5),
    ]
    assert [c.step for c in discover(tmp_path)] == [1, 5, 7]
    with pytest.raises(ValueError):
        discover(tmp_path, order="mtime")


def test_duplicate_steps_name_both_files(tmp_path):
    write_specdyn_safetensors(tmp_path / "step_100.safetensors", 100)
    write_specdyn_safetensors(tmp_path / "copy.safetensors", 100)
    with pytest.raises(SpecdynError) as err:
        discover(tmp_path)
    assert "copy.safetensors" in err.value.message and "step_100.safetensors" in err.value.message
    assert len(discover(tmp_path, order="name")) == 2


def test_no_checkpoints_is_an_error_naming_the_dir_and_layouts(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "optimizer.pt").write_bytes(b"")
    with pytest.raises(SpecdynError) as err:
        discover(tmp_path)
    assert err.value.code == EXIT_NO_CHECKPOINTS
    assert str(tmp_path) in err.value.message and "safetensors" in err.value.message and ".ckpt" in err.value.message
    with pytest.raises(SpecdynError) as err:
        discover(tmp_path / "nope")
    assert err.value.code == EXIT_NOT_FOUND and "nope" in err.value.message
    with pytest.raises(SpecdynError, match="is a file"):
        discover(tmp_path / "run.json")


def test_mixed_formats_are_refused(tmp_path):
    write_specdyn_safetensors(tmp_path / "step_1.safetensors", 1)
    write_specdyn_safetensors(tmp_path / "step_2.safetensors", 2)
    write_torch(tmp_path / "step_3.pt", tiny_state(3))
    with pytest.raises(SpecdynError) as err:
        discover(tmp_path)
    assert "2 safetensors" in err.value.message and "1 torch" in err.value.message
    assert "step_3.pt" in err.value.message and "one series" in err.value.message


def _header_only_copy(src: Path, dst: Path):
    """A safetensors file with its header intact and its tensor data missing."""
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    dst.write_bytes(data[: 8 + length])


def test_discovery_reads_headers_only(tmp_path):
    # 400 files whose tensor data is missing: discovery must work from the headers alone.
    src = tmp_path / "src.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(src), metadata={"step": "0"})
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    run = tmp_path / "run"
    run.mkdir()
    for step in range(400):
        header["__metadata__"]["step"] = str(step * 10)
        blob = json.dumps(header).encode()
        (run / f"ckpt_{step:03d}.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    ckpts = discover(run)
    assert [c.step for c in ckpts] == list(range(0, 4000, 10))
    with pytest.raises(CheckpointError, match="ckpt_007.safetensors"):
        CheckpointReader(ckpts[7])


# --- torch.save files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "model_state_dict"])
def test_torch_files_keep_registration_order_and_strip_prefixes(tmp_path, wrap):
    prefixes = ["module.", "_orig_mod.", "module._orig_mod."]
    written = {}
    for i, step in enumerate((30, 10, 20)):
        sd = tiny_state(step, torch.float16)
        written[step] = sd
        raw = OrderedDict((prefixes[i] + k, v) for k, v in sd.items())
        raw["num_batches_tracked"] = 3  # a non-tensor entry: dropped
        obj = raw if wrap is None else {wrap: raw, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}}}
        write_torch(tmp_path / f"ckpt_{step}.pt", obj)
    ckpts = discover(tmp_path)
    assert [c.step for c in ckpts] == [10, 20, 30] and {c.format for c in ckpts} == {"torch"}
    for c in ckpts:
        assert_same(read_all(c), written[c.step])


def test_nanogpt_layout_takes_iter_num_from_the_file(tmp_path):
    for name, it in (("ckpt_a.pt", 2000), ("ckpt_b.pt", 500), ("ckpt_c.pt", 1000)):
        write_torch(
            tmp_path / name,
            {
                "model": tiny_state(it),
                "optimizer": {"state": {}, "param_groups": []},
                "model_args": {"n_layer": 2},
                "iter_num": it,
                "best_val_loss": 1.5,
                "config": {"lr": 6e-4},
            },
        )
    ckpts = discover(tmp_path)
    assert [(c.path.name, c.step) for c in ckpts] == [("ckpt_b.pt", 500), ("ckpt_c.pt", 1000), ("ckpt_a.pt", 2000)]
    with CheckpointReader(ckpts[0]) as reader:
        assert reader.names() == REGISTRATION
        assert reader.metadata() == {
            "model_args": {"n_layer": 2},
            "iter_num": 500,
            "best_val_loss": 1.5,
            "config": {"lr": 6e-4},
        }


@pytest.mark.parametrize("key", ["step", "global_step", "iteration"])
def test_torch_step_keys(tmp_path, key):
    for i, step in enumerate((7, 3)):
        write_torch(tmp_path / f"weights_{i}.pth", {"state_dict": tiny_state(i), key: step})
    assert [c.path.name for c in discover(tmp_path)] == ["weights_1.pth", "weights_0.pth"]


def test_legacy_torch_files_and_bin_suffix(tmp_path):
    sd = tiny_state(1)
    write_torch(tmp_path / "step_1.bin", sd, legacy=True)
    write_torch(tmp_path / "step_2.bin", tiny_state(2))
    write_torch(tmp_path / "training_args.bin", {"lr": 0.1})
    write_torch(tmp_path / "optimizer.pt", {"state": {}})
    ckpts = discover(tmp_path)
    assert [c.relpath for c in ckpts] == ["step_1.bin", "step_2.bin"]
    assert_same(read_all(ckpts[0]), sd)


def test_prefix_collision_is_an_error(tmp_path):
    write_torch(tmp_path / "step_1.pt", {"module.w": torch.zeros(2, 2), "w": torch.ones(2, 2)})
    with pytest.raises(CheckpointError, match="step_1.pt"):
        CheckpointReader(open_checkpoint(tmp_path / "step_1.pt"))


def test_file_without_a_state_dict_is_a_checkpoint_error(tmp_path):
    write_torch(tmp_path / "step_1.pt", {"epoch": 3, "note": "no weights"})
    with pytest.raises(CheckpointError, match="step_1.pt.*no model state dict"):
        CheckpointReader(open_checkpoint(tmp_path / "step_1.pt"))


def test_nested_state_dicts_flatten_with_dots(tmp_path):
    write_torch(
        tmp_path / "step_1.pt",
        {
            "encoder": {"w": torch.zeros(2, 3)},
            "decoder": {"w": torch.ones(3, 2)},
            "optimizer": {"exp_avg": {"w": torch.zeros(2, 3)}},
        },
    )
    with CheckpointReader(open_checkpoint(tmp_path / "step_1.pt")) as reader:
        assert reader.names() == ["encoder.w", "decoder.w"]
        assert reader.shape("decoder.w") == (3, 2)


# --- Hugging Face Trainer folders --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    runs = {}
    for layout in ("single", "sharded", "bin", "bin_sharded"):
        run = root / layout
        written = {step: write_hf_checkpoint(run / f"checkpoint-{step}", step, layout) for step in (500, 1000, 1500)}
        runs[layout] = (run, written)
    return runs


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin_sharded"])
def test_hf_trainer_checkpoints(hf_runs, layout):
    run, written = hf_runs[layout]
    ckpts = discover(run)
    assert [(c.relpath, c.step, c.format) for c in ckpts] == [
        ("checkpoint-500", 500, "hf"),
        ("checkpoint-1000", 1000, "hf"),
        ("checkpoint-1500", 1500, "hf"),
    ]
    got = read_all(ckpts[1])
    want = written[1000]
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    names = list(got)
    if layout.startswith("bin"):  # pickled state dicts keep registration order
        assert names == list(want)
    else:
        assert names == sorted(names, key=natural_key)
    with CheckpointReader(ckpts[1]) as reader:
        assert reader.shape("transformer.h.1.attn.c_attn.weight") == (8, 24)  # HF Conv1D: stored in x out
        meta = reader.metadata()
    assert meta["trainer_state"]["global_step"] == 1000 and meta["config"]["n_layer"] == 2


def test_hf_step_from_folder_name_and_final_model_ignored(tmp_path):
    pytest.importorskip("transformers")
    write_hf_checkpoint(tmp_path / "checkpoint-20", 20, trainer_state=False)
    write_hf_checkpoint(tmp_path / "checkpoint-100", 100)
    write_hf_checkpoint(tmp_path / "final", 7)  # then moved to the top, as Trainer.save_model does
    for f in (tmp_path / "final").iterdir():
        shutil.move(str(f), tmp_path / f.name)
    (tmp_path / "final").rmdir()
    (tmp_path / "checkpoint-300").mkdir()
    save_file({"lora_A.weight": torch.zeros(2, 8)}, str(tmp_path / "checkpoint-300" / "adapter_model.safetensors"))
    ckpts = discover(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert [(c.relpath, c.step) for c in ckpts] == [("checkpoint-20", 20), ("checkpoint-100", 100)]


def test_folders_being_written_are_skipped(tmp_path):
    pytest.importorskip("transformers")
    write_hf_checkpoint(tmp_path / "checkpoint-10", 10)
    write_hf_checkpoint(tmp_path / "checkpoint-20.tmp", 20)  # specdyn train's staging name
    write_dcp(tmp_path / "checkpoint-30.partial", {"model": dict(tiny_state(0))})
    assert [c.relpath for c in discover(tmp_path)] == ["checkpoint-10"]


def test_adapter_only_folders_are_reported(tmp_path):
    (tmp_path / "checkpoint-300").mkdir()
    save_file({"lora_A.weight": torch.zeros(2, 8)}, str(tmp_path / "checkpoint-300" / "adapter_model.safetensors"))
    with pytest.raises(SpecdynError) as err:
        discover(tmp_path)
    assert err.value.code == EXIT_NO_CHECKPOINTS and "PEFT adapters" in err.value.message


def test_a_single_hf_folder_is_one_checkpoint(hf_runs):
    run, written = hf_runs["sharded"]
    folder = run / "checkpoint-500"
    ckpts = discover(folder)
    assert [(c.relpath, c.step, c.run_dir) for c in ckpts] == [("checkpoint-500", 500, run.resolve())]
    assert open_checkpoint(folder) == ckpts[0]


def test_missing_shard_names_it(hf_runs, tmp_path):
    run = shutil.copytree(hf_runs["sharded"][0] / "checkpoint-500", tmp_path / "checkpoint-500")
    (run / "model-00003-of-00009.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00003-of-00009.safetensors"):
        read_all(open_checkpoint(run))


# --- Lightning ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    """A real Trainer.fit of 3 steps; hyperparameters include a Namespace and a Path (non-allowlisted in torch)."""
    pytest.importorskip("lightning")
    import argparse

    run = tmp_path_factory.mktemp("lightning")
    return write_lightning_run(run, max_steps=3, args=argparse.Namespace(width=4, data=Path("/data/mnist")), lr=0.1)


def test_lightning_series(lightning_run, tmp_path):
    run = shutil.copytree(lightning_run, tmp_path / "run")
    shutil.copy(run / "epoch=0-step=2.ckpt", run / "epoch=0-step=2-v1.ckpt")  # a collision copy
    assert (run / "last.ckpt").is_file()
    ckpts = discover(run)
    assert [(c.relpath, c.step, c.format) for c in ckpts] == [
        ("epoch=0-step=1.ckpt", 1, "lightning"),
        ("epoch=0-step=2.ckpt", 2, "lightning"),
        ("epoch=0-step=3.ckpt", 3, "lightning"),
    ]
    # torch refuses these hyperparameters under weights_only; the inert allowlist admits them.
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(ckpts[0].path)) == [
        "argparse.Namespace",
        "pathlib.PosixPath",
    ]
    full = torch.load(ckpts[2].path, weights_only=False)  # our own fixture: trusted
    with CheckpointReader(ckpts[2]) as reader:
        names = reader.names()
        assert names == [f"model.{n}" for n in REGISTRATION]  # Lightning's attribute prefix is kept
        assert reader.shape("model.blocks.0.weight") == (4, 8)
        meta = reader.metadata()
        for name in names:
            assert torch.equal(reader.tensor(name), full["state_dict"][name])
    assert meta["hyper_parameters"] == {"args": {"width": 4, "data": "/data/mnist"}, "lr": 0.1}
    assert meta["global_step"] == 3 and meta["epoch"] == 0
    assert "state_dict" not in meta and "optimizer_states" not in meta


def test_lightning_step_comes_from_the_file_not_the_name(lightning_run, tmp_path):
    shutil.copy(lightning_run / "epoch=0-step=1.ckpt", tmp_path / "best-epoch=14-val_loss=0.33.ckpt")
    shutil.copy(lightning_run / "epoch=0-step=2.ckpt", tmp_path / "best-epoch=3-val_loss=0.50.ckpt")
    shutil.copy(lightning_run / "last.ckpt", tmp_path / "last.ckpt")
    assert [(c.path.name, c.step) for c in discover(tmp_path)] == [
        ("best-epoch=14-val_loss=0.33.ckpt", 1),
        ("best-epoch=3-val_loss=0.50.ckpt", 2),
    ]


def test_lone_versioned_lightning_file_is_kept(lightning_run, tmp_path):
    shutil.copy(lightning_run / "epoch=0-step=1.ckpt", tmp_path / "epoch=0-step=1-v1.ckpt")
    shutil.copy(lightning_run / "last.ckpt", tmp_path / "last-v1.ckpt")
    assert [c.path.name for c in discover(tmp_path)] == ["epoch=0-step=1-v1.ckpt"]


# --- torch.distributed.checkpoint --------------------------------------------------------------------------


def test_dcp_series(tmp_path):
    written = {}
    for step in (300, 100, 200):
        sd = tiny_state(step, torch.bfloat16)
        written[step] = sd
        write_dcp(
            tmp_path / f"dcp_{step // 100}",
            {"model": dict(sd), "step": step, "optim": {"exp_avg": {"head.weight": torch.ones(8, 4)}}},
        )
    ckpts = discover(tmp_path)
    assert [(c.relpath, c.step, c.format) for c in ckpts] == [
        ("dcp_1", 100, "dcp"),
        ("dcp_2", 200, "dcp"),
        ("dcp_3", 300, "dcp"),
    ]
    with CheckpointReader(ckpts[0]) as reader:
        assert reader.names() == REGISTRATION  # nesting key stripped, optimizer left out, saved order kept
        assert reader.shape("conv.weight") == (2, 1, 3, 3)
        assert reader.dtype("blocks.10.weight") == torch.bfloat16
        assert reader.metadata() == {"step": 100}
    assert_same(read_all(ckpts[2]), written[300])


def test_dcp_flat_state_dict_keeps_names_and_uses_the_folder_name(tmp_path):
    sd = tiny_state(1)
    write_dcp(tmp_path / "step-40", {"module." + k: v for k, v in sd.items()})
    ckpt = discover(tmp_path)[0]
    assert ckpt.step == 40
    assert_same(read_all(ckpt), sd)


def test_dcp_inside_an_hf_fsdp_checkpoint(tmp_path):
    for step in (10, 20):
        folder = tmp_path / f"checkpoint-{step}"
        write_dcp(folder / "pytorch_model_fsdp_0", {"model": dict(tiny_state(step))})
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    ckpts = discover(tmp_path)
    assert [(c.relpath, c.step, c.format) for c in ckpts] == [
        ("checkpoint-10/pytorch_model_fsdp_0", 10, "dcp"),
        ("checkpoint-20/pytorch_model_fsdp_0", 20, "dcp"),
    ]
    with CheckpointReader(ckpts[1]) as reader:
        assert reader.metadata()["trainer_state"] == {"global_step": 20}
    assert_same(read_all(ckpts[1]), tiny_state(20))


# --- single checkpoints, truncation, memory ----------------------------------------------------------------


def test_open_checkpoint(tmp_path):
    write_specdyn_safetensors(tmp_path / "step_7.safetensors", 7)
    write_torch(tmp_path / "final.pt", tiny_state(0))
    a = open_checkpoint(tmp_path / "step_7.safetensors")
    assert (a.format, a.step, a.relpath, a.run_dir) == ("safetensors", 7, "step_7.safetensors", tmp_path.resolve())
    b = open_checkpoint(str(tmp_path / "final.pt"))
    assert (b.format, b.step) == ("torch", None)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SpecdynError, match="notes.txt is not a checkpoint"):
        open_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(SpecdynError) as err:
        open_checkpoint(tmp_path / "missing.pt")
    assert err.value.code == EXIT_NOT_FOUND


def _write_one(case: str, d: Path, request) -> tuple[Path, str | None]:
    """One checkpoint of format `case` under d: (its path, the file inside it to damage, if a folder)."""
    if case == "safetensors":
        write_specdyn_safetensors(d / "step_1.safetensors", 1)
        return d / "step_1.safetensors", None
    if case in ("torch", "torch-legacy"):
        write_torch(d / "step_2.pt", tiny_state(2), legacy=case == "torch-legacy")
        return d / "step_2.pt", None
    if case == "lightning":
        return Path(shutil.copy(request.getfixturevalue("lightning_run") / "epoch=0-step=1.ckpt", d)), None
    if case.startswith("hf-"):
        layout, inner = {
            "hf-single": ("single", "model.safetensors"),
            "hf-sharded": ("sharded", "model-00009-of-00009.safetensors"),
            "hf-index": ("sharded", "model.safetensors.index.json"),
            "hf-bin": ("bin", "pytorch_model.bin"),
        }[case]
        src = request.getfixturevalue("hf_runs")[layout][0] / "checkpoint-500"
        return shutil.copytree(src, d / "checkpoint-500"), inner
    write_dcp(d / "dcp", {"model": dict(tiny_state(4))})
    return d / "dcp", {"dcp-data": "__0_0.distcp", "dcp-metadata": ".metadata"}[case]


@pytest.mark.parametrize(
    "case",
    [
        "safetensors",
        "torch",
        "torch-legacy",
        "lightning",
        "hf-single",
        "hf-sharded",
        "hf-index",
        "hf-bin",
        "dcp-data",
        "dcp-metadata",
    ],
)
def test_truncated_checkpoints_raise_checkpoint_errors_naming_the_file(tmp_path, request, case):
    path, inner = _write_one(case, tmp_path, request)
    ckpt = open_checkpoint(path)
    victim = truncate(path / inner if inner else path)
    with pytest.raises(CheckpointError) as err:
        read_all(ckpt)
    assert victim.name in err.value.message and "truncated or corrupt" in err.value.message, err.value.message


def test_truncated_file_keeps_its_place_in_the_series(tmp_path):
    for step in (1, 2, 3):
        write_torch(tmp_path / f"step_{step}.pt", tiny_state(step))
    truncate(tmp_path / "step_2.pt")
    ckpts = discover(tmp_path)  # the step comes from the name; reading it reports the damage
    assert [c.step for c in ckpts] == [1, 2, 3]
    with pytest.raises(CheckpointError, match="step_2.pt"):
        read_all(ckpts[1])


def _rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon")


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """The same 96 MiB state dict (12 tensors of 8 MiB) as safetensors and torch files, written by a subprocess so
    that this process's allocator holds no freed memory the reader could silently reuse."""
    out = tmp_path_factory.mktemp("big")
    script = (
        "import sys, torch; from safetensors.torch import save_file\n"
        "sd = {f'layers.{i}.weight': torch.full((1024, 2048), float(i)) for i in range(12)}\n"
        "save_file(sd, sys.argv[1] + '/big.safetensors'); torch.save(sd, sys.argv[1] + '/big.pt')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(out)], check=True)
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", ["big.safetensors", "big.pt"])
def test_reading_tensor_by_tensor_does_not_load_the_whole_file(big_files, name):
    base = _rss_anon_mib()
    peak = 0.0
    with CheckpointReader(open_checkpoint(big_files / name)) as reader:
        for tensor_name in reader.names():
            t = reader.tensor(tensor_name).float()
            assert t[0, 0].item() == float(tensor_name.split(".")[1])
            peak = max(peak, _rss_anon_mib() - base)
            del t
    # Holding the file in anonymous memory would take 96 MiB.
    assert peak < 40, f"anonymous memory grew by {peak:.0f} MiB while reading 8 MiB tensors one at a time"
