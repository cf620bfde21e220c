"""Fused projections split per head (docs/architectures.md): each family's tiny model, saved by transformers,
analyzed, and its query-key and value-output alignment checked against q, k, v per head as the attention
module's own forward produces them (captured where it calls the attention function, at position 0 so that
rotary embeddings are the identity), and a fused gate/up projection's halves as its MLP's forward chunks them."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tests.test_architectures import (
    D,
    H,
    V,
    analyzed,
    assert_pairs_file_round_trip,
    check_family,
    check_pair,
    diag_ref,
    eye_out,
    loaded,
    qk_reference,
    save_series,
    vo_reference,
)

T = pytest.importorskip("transformers")


def fused_configs():
    lm = dict(vocab_size=V)
    return {
        "gpt_bigcode_mqa": (T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig(n_embd=D, n_layer=1, n_head=H, n_positions=16, multi_query=True, **lm)),
        "gpt_bigcode_mha": (T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig(n_embd=D, n_layer=1, n_head=H, n_positions=16, multi_query=False, **lm)),
        "phi3": (T.Phi3ForCausalLM, T.Phi3Config(hidden_size=D, num_hidden_layers=1, num_attention_heads=H, num_key_value_heads=2, intermediate_size=24, pad_token_id=0, **lm)),
        "codegen": (T.CodeGenForCausalLM, T.CodeGenConfig(n_embd=D, n_layer=1, n_head=H, rotary_dim=4, n_positions=16, **lm)),
        "persimmon": (T.PersimmonForCausalLM, T.PersimmonConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H, intermediate_size=48, qk_layernorm=False, bos_token_id=1, eos_token_id=2, **lm)),
        "glm": (T.GlmForCausalLM, T.GlmConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H, num_key_value_heads=2, head_dim=D // H, intermediate_size=24, pad_token_id=0, eos_token_id=1, **lm)),
        "modernbert": (T.ModernBertForMaskedLM, T.ModernBertConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H, intermediate_size=24, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, **lm)),
        "mpt": (T.MptForCausalLM, T.MptConfig(d_model=D, n_heads=H, n_layers=1, expansion_ratio=2, **lm)),
        "gpt_neox_japanese": (T.GPTNeoXJapaneseForCausalLM, T.GPTNeoXJapaneseConfig(hidden_size=D, num_attention_heads=H, num_hidden_layers=1, intermediate_multiple_size=2, **lm)),
        "openai": (T.OpenAIGPTLMHeadModel, T.OpenAIGPTConfig(n_embd=D, n_head=H, n_layer=1, n_positions=16, **lm)),
    }  # fmt: skip


def captured_heads(model, attn):
    """q (H, d_h, d) and k, v per query head (GQA: through repeat_interleave, as repeat_kv), from `attn`'s own
    forward on the identity (bias removed by a forward on zeros), captured at the attention function."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    got = []

    def capture(module, q, k, v, *args, **kwargs):
        got.append((q, k, v))
        B, _, T_, _ = q.shape
        return torch.zeros(B, T_, q.shape[1] * q.shape[3]), None

    kwargs = {"attention_mask": None}
    rotary = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    x = torch.eye(D)[None]
    if rotary is not None:
        at0 = {"position_ids": torch.zeros(1, D, dtype=torch.long)}
        if "layer_type" in inspect.signature(type(rotary).forward).parameters:  # ModernBERT: global, local
            at0["layer_type"] = model.config.layer_types[0]
        kwargs["position_embeddings"] = rotary(x, **at0)
    saved = ALL_ATTENTION_FUNCTIONS.__dict__.get("get_interface")
    ALL_ATTENTION_FUNCTIONS.get_interface = lambda impl, default: capture
    try:
        with torch.no_grad():
            attn(x, **kwargs)
            attn(torch.zeros_like(x), **kwargs)
    finally:
        del ALL_ATTENTION_FUNCTIONS.get_interface
        if saved is not None:
            ALL_ATTENTION_FUNCTIONS.get_interface = saved
    (q1, k1, v1), (q0, k0, v0) = got
    q, k, v = ((a - b)[0].transpose(1, 2) for a, b in ((q1, q0), (k1, k0), (v1, v0)))  # (heads, d_h, d)
    k, v = (t.repeat_interleave(q.shape[0] // t.shape[0], dim=0) for t in (k, v))
    return q, k, v


def _thirds_conv1d(attn):
    """GPT-1: `c_attn(x).split(split_size, dim=2)`, each viewed as (H, d_h)."""
    q, k, v = eye_out(attn.c_attn, D).split(attn.split_size, dim=1)
    return tuple(t.view(D, H, D // H).permute(1, 2, 0) for t in (q, k, v))


def _mpt(attn):
    """MptAttention.forward: `Wqkv(x).chunk(3, dim=2)`, each reshaped to (H, d_h)."""
    q, k, v = eye_out(attn.Wqkv, D).chunk(3, dim=1)
    return tuple(t.reshape(D, H, D // H).permute(1, 2, 0) for t in (q, k, v))


def _japanese(attn):
    """GPTNeoXJapaneseAttention.forward: `view(..., H, 3 * head_size)`, then q, k, v slices of the last axis."""
    dh = attn.head_size
    qkv = eye_out(attn.query_key_value, D).view(D, H, 3 * dh)
    return tuple(qkv[..., i * dh : (i + 1) * dh].permute(1, 2, 0) for i in range(3))


# family -> (attention module of layer 0, its output projection, q/k/v extractor or None: captured)
ATTENTION = {
    "gpt_bigcode_mqa": (lambda m: m.transformer.h[0].attn, "c_proj", None),
    "gpt_bigcode_mha": (lambda m: m.transformer.h[0].attn, "c_proj", None),
    "phi3": (lambda m: m.model.layers[0].self_attn, "o_proj", None),
    "codegen": (lambda m: m.transformer.h[0].attn, "out_proj", None),
    "persimmon": (lambda m: m.model.layers[0].self_attn, "dense", None),
    "glm": (lambda m: m.model.layers[0].self_attn, "o_proj", None),
    "modernbert": (lambda m: m.model.layers[0].attn, "Wo", None),
    "mpt": (lambda m: m.transformer.blocks[0].attn, "out_proj", _mpt),
    "gpt_neox_japanese": (lambda m: m.gpt_neox_japanese.layers[0].attention, "dense", _japanese),
    "openai": (lambda m: m.transformer.h[0].attn, "c_proj", _thirds_conv1d),
}
# family -> (its MLP of layer 0, fused gate/up name, output name)
GATE_UP = {
    "phi3": (lambda m: m.model.layers[0].mlp, "gate_up_proj", "down_proj"),
    "glm": (lambda m: m.model.layers[0].mlp, "gate_up_proj", "down_proj"),
    "modernbert": (lambda m: m.model.layers[0].mlp, "Wi", "Wo"),
}


def references(models, family):
    get, o_name, extract = ATTENTION[family]
    qk, vo = [], []
    for m in models:
        attn = get(m)
        q, k, v = extract(attn) if extract else captured_heads(m, attn)
        o = getattr(attn, o_name)
        W_o = o.weight.detach() if type(o).__name__ != "Conv1D" else o.weight.detach().T
        qk.append(qk_reference(q, k))
        vo.append(vo_reference(v, W_o))
    return qk, vo


def layer0_pairs(store):
    docs = [p for p in store.pair_docs() if ".0." in p["prev"]]
    qk = next(p["name"] for p in docs if p["kind"] == "qk")
    vo = next(p["name"] for p in docs if p["prev"] != p["next"] and (p["kind"] == "vo" or ".v_proj" in p["prev"]))
    return qk, vo


@pytest.mark.parametrize("family", list(fused_configs()))
def test_fused_family_split_per_head(tmp_path, family, one_thread):
    cls, config = fused_configs()[family]
    run = tmp_path / "run"
    save_series(run, cls, config, steps=(1,))
    store = analyzed(run)
    models = loaded(cls, store)
    check_family(store, models[-1], tied_head=bool(config.tie_word_embeddings))
    qk_refs, vo_refs = references(models, family)
    qk, vo = layer0_pairs(store)
    worst = max(check_pair(store, qk, qk_refs, f"{family} {qk}"), check_pair(store, vo, vo_refs, f"{family} {vo}"))
    print(f"{family}: max |stored - reference| over qk and vo = {worst:.2e}")
    if family in GATE_UP:
        get, fused, out = GATE_UP[family]
        halves = _gate_up_pairs(store, fused)
        assert len(halves) == 2
        for name, half in zip(halves, range(2)):
            refs = []
            for m in models:
                mlp = get(m)
                rows = eye_out(getattr(mlp, fused), D).chunk(2, dim=-1)[half].T.numpy().astype(np.float64)
                U = np.linalg.svd(rows, full_matrices=False)[0]
                Vd = np.linalg.svd(getattr(mlp, out).weight.detach().numpy().astype(np.float64))[2].T
                refs.append(diag_ref(U, Vd))
            worst = max(worst, check_pair(store, name, refs, f"{family} {name}"))
        spec = store.matrix_spec(store.pair_spec(halves[0]).prev)
        assert spec.fused[0] == "gate_up"
    assert not any(p["prev"] == p["next"] and p["kind"] != "qk" for p in store.pair_docs())


def _gate_up_pairs(store, fused):
    return [p["name"] for p in store.pair_docs() if p.get("rows") and f".{fused}." in p["prev"]]


def test_fused_projection_without_a_family_is_recorded_unsplit(tmp_path, monkeypatch, one_thread):
    """A model_type no family describes: its fused `c_attn` is analyzed whole, recorded per matrix as `unsplit`
    (no head pairs from a guessed split), and the warning names it."""
    from specdyn.arch import registry

    monkeypatch.setattr(registry, "FAMILIES", {k: f for k, f in registry.FAMILIES.items() if k != "gpt_bigcode"})
    cls, config = fused_configs()["gpt_bigcode_mqa"]
    run = tmp_path / "run"
    save_series(run, cls, config, steps=(1,))
    with pytest.warns(UserWarning, match=r"not split .*transformer\.h\.0\.attn\.c_attn\.weight"):
        store = analyzed(run)
    spec = store.matrix_spec("transformer.h.0.attn.c_attn.weight")
    assert spec.fused[:2] == ("unsplit", H) and spec.kind == "linear"
    assert not any(p["kind"] in ("qk", "vo") for p in store.pair_docs())


def test_pairs_file_takes_row_halves(tmp_path, one_thread):
    """`--pairs` reads the `prev[a:b] -> next` names a fused gate/up writes, to the same pairs and numbers."""
    cls, config = fused_configs()["phi3"]
    run = tmp_path / "run"
    save_series(run, cls, config, steps=(1,))
    auto = analyzed(run)
    assert "model.layers.0.mlp.gate_up_proj.weight[0:24] -> model.layers.0.mlp.down_proj.weight" in auto.pairs
    assert_pairs_file_round_trip(run, auto, tmp_path)
