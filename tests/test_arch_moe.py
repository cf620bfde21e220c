"""Mixtures of experts (docs/architectures.md): depth order from the model's registration (every expert of an
experts module in expert order, where the module registers), experts' stacks split into per-expert matrices
with their expert index, routers typed, pairs within an expert and none across layers into one. A checkpoint of
per-expert tensors (as transformers saves the model) and one of the stacks (as the model holds them) give the
same store; every split is checked against the experts module's own forward (`gate_up_proj[e]`, chunked or
interleaved as its forward splits it)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.test_architectures import analyzed, check_pair, diag_ref

T = pytest.importorskip("transformers")

D, V, E = 32, 64, 3


def moe_configs():
    attn = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=V)
    return {
        "qwen2_moe": (T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig(**attn, intermediate_size=16, moe_intermediate_size=8, shared_expert_intermediate_size=16, num_experts=E, num_experts_per_tok=2)),
        "mixtral": (T.MixtralForCausalLM, T.MixtralConfig(**attn, intermediate_size=16, num_local_experts=E, num_experts_per_tok=2)),
        "gpt_oss": (T.GptOssForCausalLM, T.GptOssConfig(**attn, intermediate_size=16, num_local_experts=E, num_experts_per_tok=2, head_dim=8)),
        "qwen3_moe": (T.Qwen3MoeForCausalLM, T.Qwen3MoeConfig(**attn, intermediate_size=16, moe_intermediate_size=8, num_experts=E, num_experts_per_tok=2, mlp_only_layers=[0], head_dim=8)),
        "olmoe": (T.OlmoeForCausalLM, T.OlmoeConfig(**attn, intermediate_size=8, num_experts=E, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1, bos_token_id=None)),
        "deepseek_v3": (T.DeepseekV3ForCausalLM, T.DeepseekV3Config(**{**attn, "num_key_value_heads": 4}, intermediate_size=16, moe_intermediate_size=8, n_routed_experts=E, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)),
    }  # fmt: skip


def model_of(family):
    cls, config = moe_configs()[family]
    torch.manual_seed(0)
    return cls(config), config


def save_experts(run, model):
    """save_pretrained: transformers writes each expert's matrices as tensors of their own (its reverse
    conversion), where the family has one."""
    model.save_pretrained(run / "checkpoint-1")


def save_stacks(run, model, config, torch_file=False):
    """The model's own state dict (3-D expert stacks), beside its config.json: as a torch file or safetensors."""
    from safetensors.torch import save_file

    folder = run / "checkpoint-1"
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if torch_file:
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        save_file(sd, folder / "model.safetensors")


def expert_matrices(experts, e):
    """{role: (out x in) matrix} of expert e, split as the experts module's forward splits `gate_up_proj[e]`:
    `chunk(2)` of its output, or `[..., ::2]` / `[..., 1::2]` (GPT-OSS, stored in x out)."""
    gu, down = experts.gate_up_proj[e].detach(), experts.down_proj[e].detach()
    if experts.is_transposed:
        gu, down = gu.T, down.T
    gate, up = (gu[::2], gu[1::2]) if not experts.is_concatenated else gu.chunk(2, dim=0)
    return {"gate": gate, "up": up, "down": down}


def expected_order(model):
    """named_parameters() with each experts module's stacks expanded where it registers: expert by expert, its
    matrices in the module's order (gate_up -> gate, up; down); expert biases and 1-D parameters left out."""
    modules, out, seen = dict(model.named_modules()), [], set()
    for name, p in model.named_parameters():
        owner = name.rpartition(".")[0]
        if hasattr(modules[owner], "is_transposed"):
            if owner not in seen:
                seen.add(owner)
                stacks = [n for n, q in modules[owner].named_parameters() if q.ndim == 3]
                for e in range(modules[owner].num_experts):
                    out += [
                        (owner, e, role) for s in stacks for role in (("gate", "up") if "gate_up" in s else ("down",))
                    ]
            continue
        if p.ndim >= 2:
            out.append(name)
    return out


def layer(name):
    m = re.search(r"layers\.(\d+)\.", name)
    return int(m[1]) if m else None


def check_moe_store(store, model, family):
    """Order against the model's registration, kinds, expert indices, pairs, and every expert's matrix's singular
    values and gate/up -> down alignment against the experts module's own split."""
    order = expected_order(model)
    assert len(store.matrices) == len(order)
    modules = dict(model.named_modules())
    for name, want in zip(store.matrices, order):
        spec = store.matrix_spec(name)
        if isinstance(want, str):
            assert spec.expert is None and want.removesuffix(".weight") in _model_name(name), (name, want)
            continue
        owner, e, role = want
        assert spec.expert == e and spec.kind == "linear", name
        W = expert_matrices(modules[owner], e)[role].numpy().astype(np.float64)
        assert spec.shape == W.shape, (name, spec.shape, W.shape)
        np.testing.assert_allclose(store.sv(name)[-1][: min(W.shape)], np.linalg.svd(W)[1], rtol=1e-4, atol=1e-6)
    assert store.matrix_spec(store.matrices[-1]).kind == "head"
    moe = [n for n, m in modules.items() if hasattr(m, "is_transposed")]  # the experts modules
    assert sum(store.matrix_spec(n).kind == "router" for n in store.matrices) >= len(moe)
    docs = store.pair_docs()
    for p in docs:  # no pair from outside an expert into it, and none across layers
        nxt, prv = store.matrix_spec(p["next"]), store.matrix_spec(p["prev"])
        if nxt.expert is not None:
            assert prv.expert == nxt.expert and layer(p["prev"]) == layer(p["next"]), p["name"]
    within = [p for p in docs if store.matrix_spec(p["prev"]).expert is not None]
    assert len(within) == 2 * E * len(moe)
    worst = 0.0
    for p in within[:2]:  # the first experts module, expert 0: gate -> down and up -> down from its own split
        mats = expert_matrices(modules[moe[0]], 0)
        role = "gate" if p is within[0] else "up"
        U = np.linalg.svd(mats[role].numpy().astype(np.float64), full_matrices=False)[0]
        Vd = np.linalg.svd(mats["down"].numpy().astype(np.float64), full_matrices=False)[2].T
        worst = max(worst, check_pair(store, p["name"], [diag_ref(U, Vd)], f"{family} {p['name']}"))
    return worst


def _model_name(name):
    return name.replace(".block_sparse_moe.", ".mlp.")


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_per_expert_tensors_and_stacks_give_the_same_store(tmp_path, family, one_thread):
    model, config = model_of(family)
    save_experts(tmp_path / "experts", model)
    save_stacks(tmp_path / "stacks", model, config)
    a, b = analyzed(tmp_path / "experts"), analyzed(tmp_path / "stacks")
    assert a.attrs["structure"].startswith("model definition") and b.attrs["structure"].startswith("model definition")
    worst = max(check_moe_store(a, model, family), check_moe_store(b, model, family))
    rename = _model_name if family == "mixtral" else (lambda n: n)  # Mixtral saves its MLP as block_sparse_moe
    assert [rename(n) for n in a.matrices] == b.matrices
    assert [rename(p) for p in a.pairs] == b.pairs
    assert [a.matrix_spec(n).expert for n in a.matrices] == [b.matrix_spec(n).expert for n in b.matrices]
    assert [a.matrix_spec(n).kind for n in a.matrices] == [b.matrix_spec(n).kind for n in b.matrices]
    for n, m in zip(a.matrices, b.matrices):
        np.testing.assert_allclose(a.sv(n), b.sv(m), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.alignment(), b.alignment(), atol=1e-5)
    assert a.attrs["refused"] == {} and b.attrs["refused"] == {}
    if family == "qwen2_moe":
        assert a.matrices[6:9] == [f"model.layers.0.mlp.experts.0.{r}_proj.weight" for r in ("gate", "up", "down")]
        assert a.matrix_spec("model.layers.0.mlp.shared_expert_gate.weight").kind == "router"
    print(f"{family}: max |stored - reference| over expert pairs = {worst:.2e}")


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe", "deepseek_v3"])
def test_other_mixtures_saved_by_transformers(tmp_path, family, one_thread):
    """Qwen3-MoE (a dense first layer, the router registered after the experts), OLMoE, DeepSeek-V3 (dense first
    layer, shared experts, latent attention) as save_pretrained writes them: order, experts, routers, pairs."""
    model, _ = model_of(family)
    save_experts(tmp_path / "run", model)
    store = analyzed(tmp_path / "run")
    assert store.attrs["structure"].startswith("model definition") and store.attrs["architecture"]
    check_moe_store(store, model, family)


def test_transposed_interleaved_stacks_from_a_torch_file(tmp_path, one_thread):
    """GPT-OSS keeps its experts in x out with gate and up interleaved (`gate_up[..., ::2]`): a torch file of its
    stacks (never analyzed as convolutions) splits as its forward does; expert biases are not matrices."""
    model, config = model_of("gpt_oss")
    save_stacks(tmp_path / "run", model, config, torch_file=True)
    store = analyzed(tmp_path / "run")
    assert not any(store.matrix_spec(n).kind == "conv" for n in store.matrices)
    check_moe_store(store, model, "gpt_oss")
    from typer.testing import CliRunner

    from specdyn.cli import app

    rows = {
        m["name"]: m
        for m in json.loads(CliRunner().invoke(app, ["info", str(tmp_path / "run"), "--json"]).stdout)["matrices"]
    }
    row = rows[store.matrices[6]]
    assert row["expert"] == 0 and row["cut_from"] == "model.layers.0.mlp.experts.gate_up_proj"
    spec = store.matrix_spec(store.matrices[6])
    assert spec.transposed and spec.cut.interleaved and spec.cut.tensor == "model.layers.0.mlp.experts.gate_up_proj"
    assert set(store.attrs["refused"]) == {
        f"model.layers.{i}.mlp.experts.{b}_bias" for i in (0, 1) for b in ("gate_up_proj", "down_proj")
    }


def test_stacks_without_a_config_are_experts_not_convolutions(tmp_path, one_thread):
    """A plain torch file of a mixture's state dict, no config.json: its `experts.*_proj` stacks are taken for
    transformers' default expert layout (a guess, recorded as such), never for conv kernels."""
    model, config = model_of("qwen2_moe")
    run = tmp_path / "run"
    run.mkdir()
    torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, run / "step_1.pt")
    store = analyzed(run)
    assert not any(store.matrix_spec(n).kind == "conv" for n in store.matrices)
    experts = [n for n in store.matrices if store.matrix_spec(n).expert is not None]
    assert len(experts) == 3 * E * config.num_hidden_layers
    assert experts[:3] == [f"model.layers.0.mlp.experts.0.{r}_proj.weight" for r in ("gate", "up", "down")]
    mats = expert_matrices(model.model.layers[0].mlp.experts, 1)
    s = np.linalg.svd(mats["up"].numpy().astype(np.float64))[1]
    np.testing.assert_allclose(store.sv("model.layers.0.mlp.experts.1.up_proj.weight")[-1][: len(s)], s, rtol=1e-4)
    for p in store.pair_docs():  # pairs by shape rules, but never into an expert from outside it
        nxt = store.matrix_spec(p["next"]).expert
        assert nxt is None or store.matrix_spec(p["prev"]).expert == nxt, p["name"]


def test_dbrx_fused_attention_and_row_stacked_experts(tmp_path, one_thread):
    """DBRX: `Wqkv` split per head (GQA) as its attention's forward splits it, and its experts stacked along the
    rows of `w1`, `v1`, `w2` (E * F, H) split as DbrxExperts.forward views them (`view(-1, F, H)[e]`; w2 is in x
    out: down = h @ w2[e])."""
    from tests.test_arch_fused import captured_heads, qk_reference, vo_reference

    config = T.DbrxConfig(
        d_model=D, n_heads=4, n_layers=1, vocab_size=V, max_seq_len=16, attn_config={"kv_n_heads": 2, "clip_qkv": 1e4},
        ffn_config={"moe_num_experts": E, "ffn_hidden_size": 16, "moe_top_k": 2},
    )  # fmt: skip
    # transformers 5.24's DbrxAttentionConfig has no default rope_theta, and its forward clamps q/k/v by
    # clip_qkv even when it is None (a clamp with no bounds raises): a bound far above the values keeps it linear
    config.attn_config.rope_theta = 10000.0
    torch.manual_seed(0)
    model = T.DbrxForCausalLM(config)
    save_stacks(tmp_path / "run", model, config)
    store = analyzed(tmp_path / "run")
    block = model.transformer.blocks[0]
    attn, mlp = block.norm_attn_norm.attn, block.ffn.experts.mlp
    q, k, v = captured_heads(model, attn)
    names = store.matrices
    wqkv = "transformer.blocks.0.norm_attn_norm.attn.Wqkv.weight"
    out = "transformer.blocks.0.norm_attn_norm.attn.out_proj.weight"
    worst = check_pair(store, f"{wqkv} (qk)", [qk_reference(q, k)], "dbrx qk")
    worst = max(
        worst, check_pair(store, f"{wqkv} -> {out}", [vo_reference(v, attn.out_proj.weight.detach())], "dbrx vo")
    )
    assert store.matrix_spec("transformer.blocks.0.ffn.router.layer.weight").kind == "router"
    experts = [n for n in names if store.matrix_spec(n).expert is not None]
    assert len(experts) == 3 * E and names.index(experts[0]) == names.index(out) + 2  # after the router
    for e in range(E):
        want = {
            "gate": mlp.w1.view(-1, 16, D)[e], "up": mlp.v1.view(-1, 16, D)[e], "down": mlp.w2.view(-1, 16, D)[e].T,
        }  # fmt: skip
        for name, role in zip(experts[3 * e : 3 * e + 3], ("gate", "up", "down")):
            W = want[role].detach().numpy().astype(np.float64)
            assert store.matrix_spec(name).expert == e and store.matrix_spec(name).shape == W.shape
            np.testing.assert_allclose(store.sv(name)[-1][: min(W.shape)], np.linalg.svd(W)[1], rtol=1e-4, atol=1e-6)
    print(f"dbrx: max |stored - reference| over qk and vo = {worst:.2e}")


def test_undeclared_expert_layout_is_not_split(tmp_path, one_thread):
    """Llama 4 stores its experts in x out without declaring it (no `is_transposed`): its stacks are not split
    by a guess but refused, named in the warning."""
    config = T.Llama4TextConfig(
        hidden_size=D, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=16, intermediate_size_mlp=16, num_local_experts=E, vocab_size=V,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.Llama4ForCausalLM(config)
    save_stacks(tmp_path / "run", model, config)
    with pytest.warns(UserWarning, match=r"not split .*experts\.gate_up_proj"):
        store = analyzed(tmp_path / "run")
    stacks = {n for n, p in model.named_parameters() if p.ndim == 3}
    assert stacks and stacks <= set(store.attrs["refused"])
    assert not any(store.matrix_spec(n).expert is not None for n in store.matrices)
