"""PEFT LoRA adapter series read as effective weights on their base, against the real `peft`'s own
`merge_and_unload()`: LoRA with rank/alpha patterns, rsLoRA, DoRA, modules_to_save, embeddings, GPT-2's Conv1D."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from specdyn.errors import CheckpointError, SpecdynError  # noqa: E402
from specdyn.io import CheckpointReader, discover  # noqa: E402
from specdyn.io.discovery import open_checkpoint  # noqa: E402
from tests.peft_fixtures import save_base, train_series  # noqa: E402

CONFIGS = {
    # DoRA with modules_to_save and per-module rank and alpha
    "dora": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                           modules_to_save=["lm_head"], rank_pattern={"layers.1.self_attn.q_proj": 2},
                           alpha_pattern={"v_proj": 3})),
    "rslora": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"], use_rslora=True)),
    "gpt2": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
}  # fmt: skip


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """{name: (base folder, run folder, {step: merged state dict}, base state dict)}, trained once."""
    root = tmp_path_factory.mktemp("peft")
    out, bases = {}, {}
    for name, (kind, cfg) in CONFIGS.items():
        if kind not in bases:
            bases[kind] = save_base(kind, root / kind)
        base = bases[kind]
        merged = train_series(base, root / name, peft.LoraConfig(**cfg), saves=(2, 4))
        out[name] = (root / kind, root / name, merged, {k: v.clone() for k, v in base.state_dict().items()})
    return out


def _on_base(run, base):
    b = open_checkpoint(base)
    return [replace(c, base=b) for c in discover(run)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_effective_weights_equal_merge_and_unload(series, name):
    base, run, merged, base_state = series[name]
    ckpts = _on_base(run, base)
    assert [c.format for c in ckpts] == ["peft", "peft"] and [c.step for c in ckpts] == [2, 4]
    for c in ckpts:
        with CheckpointReader(c) as reader:
            assert reader.metadata()["config"]["model_type"] == CONFIGS[name][0]  # the base's config.json
            changed = 0
            for n in reader.names():
                ref = merged[c.step][n].numpy()
                got = reader.array(n)
                assert got.shape == ref.shape
                np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max(), err_msg=n)
                if reader.unchanged(n):
                    np.testing.assert_array_equal(got, base_state[n].numpy())
                else:
                    changed += 1
            assert changed >= 4


def test_lowrank_delta_is_the_merged_difference(series):
    base, run, merged, base_state = series["gpt2"]
    with CheckpointReader(_on_base(run, base)[-1]) as reader:
        name = "transformer.h.0.attn.c_attn.weight"
        kind, left, right = reader.delta(name)
        assert kind == "lowrank" and left.shape[1] == right.shape[0] == 4
        want = merged[4][name].numpy() - base_state[name].numpy()
        np.testing.assert_allclose(left @ right, want, atol=1e-6 * np.abs(want).max())


def _copy(series, name, tmp_path):
    base, run, _, _ = series[name]
    shutil.copytree(run, tmp_path / "run")
    return base, tmp_path / "run"


def _config_of(run):
    return run / "checkpoint-2" / "adapter_config.json"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda doc: {**doc, "peft_type": "IA3"}, "PEFT type 'IA3' is not supported"),
        (lambda doc: {**doc, "r": 3}, "LoRA rank 4 in its weights but r=3"),
        (lambda doc: {**doc, "layer_replication": [[0, 1]]}, "layer_replication"),
    ],
)
def test_refused_configs_name_the_file(series, tmp_path, edit, message):
    base, run = _copy(series, "rslora", tmp_path)
    path = _config_of(run)
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(CheckpointError) as err:
        CheckpointReader(_on_base(run, base)[0])
    assert message in err.value.message and str(path.parent) in err.value.message


def test_corrupt_config_and_missing_base(series, tmp_path):
    base, run = _copy(series, "rslora", tmp_path)
    _config_of(run).write_text('{"peft_type": "LORA", "r": ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        CheckpointReader(_on_base(run, base)[0])
    with pytest.raises(CheckpointError, match="pass --base"):
        CheckpointReader(discover(run)[-1])  # no base attached


def test_a_base_of_other_shapes_is_refused(series, tmp_path):
    _, run, _, _ = series["gpt2"]
    llama = series["dora"][0]
    with pytest.raises(SpecdynError, match="does not hold|pass the base model"):
        CheckpointReader(_on_base(run, llama)[0])
