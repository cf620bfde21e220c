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
            bases[kind] = save_base(kind, root / f"base-{kind}")
        base = bases[kind]
        merged = train_series(base, root / name, peft.LoraConfig(**cfg), saves=(2, 4))
        out[name] = (root / f"base-{kind}", root / name, merged, {k: v.clone() for k, v in base.state_dict().items()})
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


def test_adapter_model_bin_reads_as_the_safetensors(series, tmp_path):
    """adapter_model.bin (torch.save of the same tensors, read with the safe loader) gives the same weights."""
    import torch
    from safetensors.torch import load_file

    base, run = _copy(series, "gpt2", tmp_path)
    folder = run / "checkpoint-4"
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").rename(tmp_path / "moved.safetensors")
    name = "transformer.h.1.attn.c_attn.weight"
    with CheckpointReader(_on_base(run, base)[-1]) as reader:
        got = reader.array(name)
    want = series["gpt2"][2][4][name].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


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
    with pytest.raises(SpecdynError) as err:
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


# --- analyze --base: stored spectra against merge_and_unload(), base-relative arrays against numpy ------------------

from typer.testing import CliRunner  # noqa: E402

from specdyn.cli import app  # noqa: E402
from specdyn.store.reading import SpectralStore  # noqa: E402
from tests.test_store import documented_tables  # noqa: E402

runner = CliRunner()


def _analyze(*args):
    return runner.invoke(app, ["analyze", *map(str, args), "--quiet"])


def _svd(W):
    U, s, _ = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
    return U, s


def _reference(st, j, name, W, W_base, topk=10):
    """delta_frobenius_norm, base_overlap and intruder counts from the definitions, by numpy on the weights."""
    spec = st.matrix_spec(name)
    W, W_base = spec.flatten(np.asarray(W)), spec.flatten(np.asarray(W_base))
    (U, _), (Ub, _) = _svd(W), _svd(W_base)
    overlap = np.sum((U[:, :10].T @ Ub[:, :10]) ** 2) / min(10, U.shape[1])
    cos = np.abs(Ub.T @ U[:, :topk]).max(axis=0)
    counts = [(cos < e).sum() for e in st.epsilons]
    return np.linalg.norm(W.astype(np.float64) - W_base), overlap, counts


@pytest.fixture(scope="module")
def analyzed(series, tmp_path_factory):
    """name -> the store of that adapter series analyzed on its base (every matrix), made once."""
    root, made = tmp_path_factory.mktemp("stores"), {}

    def store(name):
        if name not in made:
            base, run = series[name][:2]
            assert _analyze(run, "--base", base, "-o", root / f"{name}.zarr").exit_code == 0
            made[name] = SpectralStore.open(root / f"{name}.zarr")
        return made[name]

    return store


@pytest.fixture(scope="module")
def full_ft(series, tmp_path_factory):
    """A full fine-tune (Adam, lr 1e-4) of the tiny Llama base, analyzed against it: (store, merged, base state)."""
    from transformers import AutoModelForCausalLM

    root, base_dir = tmp_path_factory.mktemp("full"), series["dora"][0]
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    merged = train_series(base, root / "run", None, saves=(1, 3), lr=1e-4)
    assert _analyze(root / "run", "--base", base_dir, "-o", root / "s.zarr", "--include", "*layers.1.*").exit_code == 0
    return SpectralStore.open(root / "s.zarr"), merged, base.state_dict(), root / "run"


@pytest.mark.parametrize("name", ["dora", "gpt2"])
def test_analyze_adapter_series_on_its_base(series, analyzed, name):
    base, run, merged, base_state = series[name]
    st = analyzed(name)
    for array, (dims, dtype) in documented_tables()[
        "Relative to a base model (only in stores analyzed with one)"
    ].items():
        assert st.root[array].metadata.dimension_names == dims and st.root[array].dtype == np.dtype(dtype), array
    assert list(st.steps) == [2, 4] and st.base["path"] == str(base) and list(st.epsilons) == [0.5, 0.6, 0.7, 0.8, 0.9]
    intruders, overlap, fro = st.intruders(), st.metric("base_overlap"), st.metric("delta_frobenius_norm")
    for i, step in enumerate(st.steps):
        for j, m in enumerate(st.matrices):
            spec = st.matrix_spec(m)
            W, W_base = merged[int(step)][m].numpy(), base_state[m].numpy()
            want = np.linalg.svd(spec.flatten(W).astype(np.float64), compute_uv=False)
            got = st.sv(m)[i]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * want[0], err_msg=m)
            if np.array_equal(W, W_base):  # untouched: the base's own spectrum, no update, no intruders
                assert fro[i, j] == 0 and overlap[i, j] == 1 and not intruders[i, j].any()
                continue
            d, o, counts = _reference(st, j, m, W, W_base)
            assert fro[i, j] == pytest.approx(d, rel=1e-4, abs=1e-6), m
            assert overlap[i, j] == pytest.approx(o, abs=1e-4), m
            np.testing.assert_array_equal(intruders[i, j], counts, err_msg=m)


def test_lora_delta_rank_is_r_and_untouched_rows_are_filled(series, tmp_path):
    base, run, _, _ = series["rslora"]
    args = ("--intruder-epsilon", "0.3,0.9", "--include", "*layers.0.self_attn.[qk]_proj*")
    assert _analyze(run, "--base", base, "-o", tmp_path / "s.zarr", *args).exit_code == 0
    st = SpectralStore.open(tmp_path / "s.zarr")
    assert list(st.epsilons) == [0.3, 0.9] and st.intruders(0.9).shape == (2, len(st.matrices))
    q = st.matrices.index("model.layers.0.self_attn.q_proj.weight")
    k = st.matrices.index("model.layers.0.self_attn.k_proj.weight")
    # a rank-4 update of a 32 x 32 matrix: its normalized stable rank is at most 4/32
    assert 0 < st.metric("delta_stable_rank")[1, q] <= 4 / 32 + 1e-9
    assert np.isnan(st.metric("delta_effective_rank")[:, k]).all()  # ΔW = 0: undefined (zero-matrix rule)
    np.testing.assert_array_equal(st.sv(st.matrices[k])[0], st.sv(st.matrices[k])[1])
    # a rerun keeps the store's base and intruder options (the adapter config names no base)
    assert _analyze(run, "-o", tmp_path / "s.zarr", *args[2:]).exit_code == 0
    other = runner.invoke(
        app, ["analyze", str(run), "-o", str(tmp_path / "s.zarr"), "--base", str(series["gpt2"][0]), *args[2:]]
    )
    assert other.exit_code != 0 and "made with base" in other.stderr and "Traceback" not in other.stderr


def test_base_bases_past_the_budget_wait_on_disk(series, tmp_path, monkeypatch):
    from specdyn.analyze import AnalyzeOptions, analyze, relative

    base, run = series["rslora"][:2]
    opts = AnalyzeOptions(base=str(base), include=["*layers.[01].self_attn.[qv]_proj*"])
    analyze([run], tmp_path / "a.zarr", opts, show_progress=False)
    monkeypatch.setattr(relative, "BASES_BYTES", 0)
    analyze([run], tmp_path / "b.zarr", opts, show_progress=False)
    a, b = SpectralStore.open(tmp_path / "a.zarr"), SpectralStore.open(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.intruders(), b.intruders())
    np.testing.assert_array_equal(a.metric("base_overlap"), b.metric("base_overlap"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.zarr"]  # the scratch folder is gone


def test_full_fine_tune_small_lr_has_no_intruders(full_ft, tmp_path):
    st, merged, base_state, run = full_ft
    assert np.nanmax(st.intruders()) == 0 and np.nanmin(st.metric("base_overlap")) > 0.9
    m = "model.layers.1.mlp.down_proj.weight"
    j = st.matrices.index(m)
    d = np.linalg.norm(merged[3][m].numpy().astype(np.float64) - base_state[m].numpy())
    assert st.metric("delta_frobenius_norm")[1, j] == pytest.approx(d, rel=1e-4)
    # --base first: the series' own first checkpoint
    only = ("--include", "*layers.1.mlp.down_proj*")
    assert _analyze(run, "--base", "first", "-o", tmp_path / "f.zarr", *only).exit_code == 0
    first = SpectralStore.open(tmp_path / "f.zarr")
    assert (first.metric("delta_frobenius_norm")[0] == 0).all() and first.base["path"].endswith("checkpoint-1")


def _refused(tmp_path, *args, match: str, env=None):
    out = tmp_path / "bad.zarr"
    result = runner.invoke(app, ["analyze", *map(str, args), "-o", str(out), "--quiet"], env=env)
    assert result.exit_code != 0 and match in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "Traceback" not in result.stderr
    assert not out.exists()
    return lines


def test_bad_input_is_one_line_and_writes_nothing(series, tmp_path):
    gpt2_base, gpt2_run = series["gpt2"][0], series["gpt2"][1]
    llama_base, llama_run = series["dora"][0], series["dora"][1]
    _refused(tmp_path, gpt2_run, "--base", llama_base, match="pass the base model this adapter was trained on")
    _refused(tmp_path, llama_run, "--base", tmp_path / "nowhere", match="no such file or folder")
    empty = tmp_path / "hub"
    empty.mkdir()
    lines = _refused(tmp_path, llama_run, match="names no base model", env={"HF_HUB_CACHE": str(empty)})
    assert len(lines) == 1 and "--base PATH" in lines[0]
    run = tmp_path / "run"
    shutil.copytree(llama_run, run)
    for c in run.iterdir():
        doc = json.loads((c / "adapter_config.json").read_text())
        (c / "adapter_config.json").write_text(json.dumps({**doc, "peft_type": "IA3"}))
    assert len(_refused(tmp_path, run, "--base", llama_base, match="PEFT type 'IA3' is not supported")) == 1
    for c in run.iterdir():
        (c / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    _refused(tmp_path, run, "--base", llama_base, match="not valid JSON")
    # a full fine-tune against a base of other shapes
    full = tmp_path / "full"
    shutil.copytree(gpt2_base, full / "checkpoint-1")
    _refused(tmp_path, full, "--base", llama_base, match="pass the model this run started from")


def _hub_cache(root, model_dir, repo="org/tiny", revision="main"):
    """A hub cache holding `model_dir` as `repo` at `revision` (huggingface_hub's layout, files copied)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(model_dir, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / revision).write_text(commit)
    return folder


def test_base_from_a_hub_cache(series, tmp_path):
    base, llama_run, _, _ = series["rslora"]
    hub = tmp_path / "hub"
    folder = _hub_cache(hub, base)
    run = tmp_path / "run"
    shutil.copytree(llama_run, run)
    for c in run.iterdir():
        doc = json.loads((c / "adapter_config.json").read_text())
        (c / "adapter_config.json").write_text(json.dumps({**doc, "base_model_name_or_path": "org/tiny"}))
    only = ("--include", "*layers.0.self_attn.q_proj*")
    result = runner.invoke(app, ["analyze", str(run), "-o", str(tmp_path / "a.zarr"), *only, "--quiet"],
                           env={"HF_HUB_CACHE": str(hub)})  # fmt: skip
    assert result.exit_code == 0, result.stderr
    a = SpectralStore.open(tmp_path / "a.zarr")
    assert a.base["repo"] == "org/tiny" and a.base["revision"] == "main" and a.base["format"] == "hub"
    assert _analyze(run, "--base", folder, "--base-revision", "main", "-o", tmp_path / "b.zarr", *only).exit_code == 0
    np.testing.assert_array_equal(SpectralStore.open(tmp_path / "b.zarr").intruders(), a.intruders())
    _refused(tmp_path, run, "--base", folder, "--base-revision", "step9", *only, match="no revision 'step9'")
    (hub / "models--org--tiny").rename(hub / "gone")
    lines = _refused(tmp_path, run, *only, match="not in the local hub cache", env={"HF_HUB_CACHE": str(hub)})
    assert "specdyn fetch org/tiny" in lines[-1]


def test_planted_rank1_update_is_an_intruder(tmp_path):
    """A rank-1 update along a random unit direction, its singular value above the base's largest: W's top
    singular vector is nearly orthogonal to every base singular vector, so it is an intruder at every ε above its
    largest |cosine| and at none below; the counts equal numpy's from the definition."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    base = rng.standard_normal((96, 64)).astype(np.float32) / 8
    u, v = rng.standard_normal(96), rng.standard_normal(64)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    s1 = np.linalg.svd(base, compute_uv=False)[0]
    save_file({"w": base}, str(tmp_path / "base.safetensors"))
    (tmp_path / "run").mkdir()
    for step, scale in ((1, 1.5), (2, 3.0)):
        W = (base + scale * s1 * np.outer(u, v)).astype(np.float32)
        save_file({"w": W}, str(tmp_path / "run" / f"step_{step}.safetensors"))
    eps = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
    args = ("--base", tmp_path / "base.safetensors", "--intruder-epsilon", eps, "--intruder-topk", "1")
    assert _analyze(tmp_path / "run", *args, "-o", tmp_path / "s.zarr").exit_code == 0
    st = SpectralStore.open(tmp_path / "s.zarr")
    Ub = np.linalg.svd(base.astype(np.float64), full_matrices=False)[0]
    for i, scale in enumerate((1.5, 3.0)):
        U = np.linalg.svd((base + scale * s1 * np.outer(u, v)).astype(np.float64), full_matrices=False)[0]
        cos = np.abs(Ub.T @ U[:, 0]).max()
        assert abs(U[:, 0] @ u) > 0.9 and cos < 0.5  # the planted direction leads, spread over the base's vectors
        want = (cos < st.epsilons).astype(float)
        assert want.sum() >= 5
        np.testing.assert_array_equal(st.intruders()[i, 0], want)
        assert st.metric("delta_spectral_norm")[i, 0] == pytest.approx(scale * s1, rel=1e-5)
        assert st.metric("delta_effective_rank")[i, 0] == pytest.approx(1 / 64, rel=1e-4)  # rank 1 of k = 64


def test_figures_of_a_lora_and_a_full_fine_tune(analyzed, full_ft):
    from specdyn.plots.dispatch import make_figure

    lora, full = analyzed("dora"), full_ft[0]
    fig = make_figure("intruders", [lora, full], epsilon=0.9, by="kind")
    ax = fig.axes[0]
    drawn = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    adapted = {"model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.v_proj", "lm_head"}  # modules_to_save
    assert set(drawn) == adapted
    q = [lora.matrices.index(f"model.layers.{i}.self_attn.q_proj.weight") for i in (0, 1)]
    np.testing.assert_array_equal(drawn["model.layers.*.self_attn.q_proj"], lora.intruders(0.9)[:, q].sum(axis=1))
    assert len(fig.axes[1].get_lines()) == len(full.matrices)  # every matrix of a full fine-tune changed
    for kind, metric in (("base-overlap", "base_overlap"), ("delta-rank", "delta_effective_rank")):
        mesh = make_figure(kind, [lora, full]).axes[0].collections[0]
        got = np.ma.filled(mesh.get_array(), np.nan).reshape(len(lora.matrices), -1)
        np.testing.assert_array_equal(got[:, -1], lora.metric(metric)[-1])
    fig = make_figure("compare", [lora, full], metric=["base_overlap", "delta_frobenius_norm"])
    assert len(fig.axes) >= 2
    from specdyn.report import figure_jobs

    kinds = [job.kind for job in figure_jobs([lora], ["lora"])]
    assert {"intruders", "base-overlap", "delta-rank"} <= set(kinds)
