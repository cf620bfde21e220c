"""Hugging Face architectures (docs/architectures.md): tiny models built and saved by transformers itself, analyzed,
and checked against an independent computation from each model's own definition: depth order is the model's
`named_parameters()` order (tied aliases dropped), rows are outputs, every fused split and head mapping comes out
as the model's forward computes it, and the query-key and value-output numbers equal a per-head numpy SVD."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from specdyn import open_store
from specdyn.analyze import AnalyzeOptions, analyze

T = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

TOL = 1e-4


# --- tiny models, from transformers' own configs -----------------------------------------------------------------

D, H, V = 32, 4, 64


def configs():
    return {
        "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(n_embd=D, n_layer=2, n_head=H, vocab_size=V, n_positions=16)),
        "gpt_neox": (
            T.GPTNeoXForCausalLM,
            T.GPTNeoXConfig(
                hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=64, vocab_size=V,
                max_position_embeddings=16,
            ),
        ),
        "llama_gqa_tied": (
            T.LlamaForCausalLM,
            T.LlamaConfig(
                hidden_size=D, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=2, intermediate_size=64,
                vocab_size=V, tie_word_embeddings=True,
            ),
        ),
        "llama_untied": (
            T.LlamaForCausalLM,
            T.LlamaConfig(
                hidden_size=D, num_hidden_layers=2, num_attention_heads=H, num_key_value_heads=H, intermediate_size=64,
                vocab_size=V, tie_word_embeddings=False,
            ),
        ),
        "mistral": (
            T.MistralForCausalLM,
            T.MistralConfig(
                hidden_size=D, num_hidden_layers=1, num_attention_heads=H, num_key_value_heads=1, intermediate_size=64,
                vocab_size=V, head_dim=D // H,
            ),
        ),
        "qwen2": (
            T.Qwen2ForCausalLM,
            T.Qwen2Config(
                hidden_size=D, num_hidden_layers=1, num_attention_heads=H, num_key_value_heads=2, intermediate_size=64,
                vocab_size=V,
            ),
        ),
        "opt": (
            T.OPTForCausalLM,
            T.OPTConfig(
                hidden_size=D, num_hidden_layers=2, num_attention_heads=H, ffn_dim=64, vocab_size=V,
                max_position_embeddings=16, word_embed_proj_dim=D,
            ),
        ),
        "bloom": (T.BloomForCausalLM, T.BloomConfig(hidden_size=D, n_layer=2, n_head=H, vocab_size=V)),
        "falcon": (
            T.FalconForCausalLM,
            T.FalconConfig(
                hidden_size=D, num_hidden_layers=1, num_attention_heads=H, vocab_size=V, new_decoder_architecture=True,
                num_kv_heads=2,
            ),
        ),
        "falcon_mqa": (
            T.FalconForCausalLM,
            T.FalconConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=H, vocab_size=V, multi_query=True),
        ),
        "phi": (
            T.PhiForCausalLM,
            T.PhiConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=64, vocab_size=V),
        ),
        "gptj": (
            T.GPTJForCausalLM,
            T.GPTJConfig(n_embd=D, n_layer=1, n_head=H, vocab_size=V, n_positions=16, rotary_dim=4),
        ),
        "bert": (
            T.BertForSequenceClassification,
            T.BertConfig(
                hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=64, vocab_size=V,
                max_position_embeddings=16,
            ),
        ),
        "t5": (
            T.T5ForConditionalGeneration,
            T.T5Config(d_model=D, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=H, vocab_size=V),
        ),
        "vit": (
            T.ViTForImageClassification,
            T.ViTConfig(
                hidden_size=D, num_hidden_layers=1, num_attention_heads=H, intermediate_size=64, image_size=16,
                patch_size=4, num_labels=3,
            ),
        ),
    }  # fmt: skip


def save_series(run, cls, config, steps=(0, 5), shard=False):
    """A series of checkpoint-<step>/ folders written by save_pretrained (weights moved between steps)."""
    torch.manual_seed(0)
    model = cls(config)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = run / f"checkpoint-{step}"
        model.save_pretrained(folder, **({"max_shard_size": "20KB"} if shard else {}))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return model


def trainer_series(run, cls, config, steps=40):
    """A real Trainer run: `steps` optimizer steps on random tokens, a checkpoint every 10."""
    torch.manual_seed(0)
    model = cls(config)
    data = torch.randint(0, V, (64, 8), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": x, "labels": x} for x in data]
    args = T.TrainingArguments(
        output_dir=str(run), max_steps=steps, save_steps=10, per_device_train_batch_size=4, learning_rate=3e-3,
        report_to=[], use_cpu=True, save_only_model=True, disable_tqdm=True, logging_strategy="no",
        dataloader_num_workers=0,
    )  # fmt: skip
    T.Trainer(model=model, args=args, train_dataset=rows).train()


def assert_pairs_file_round_trip(run, auto, tmp_path):
    """A `--pairs` file of every pair name `auto` holds gives the same pairs and alignment; returns the file."""
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(auto.pairs) + "\n")
    again = analyze(
        [run], out=tmp_path / "again.zarr", options=AnalyzeOptions(pairs_file=str(pairs)), show_progress=False
    )
    st = open_store(again["store"])
    assert st.pair_docs() == auto.pair_docs()
    np.testing.assert_array_equal(st.alignment(), auto.alignment())
    return pairs


def analyzed(run, **opts):
    analyze([run], options=AnalyzeOptions(**opts), show_progress=False)
    return open_store(run / "specdyn.zarr")


def loaded(cls, store):
    """Each checkpoint of the store loaded by transformers' own loader."""
    return [cls.from_pretrained(p) for p in store.checkpoint_paths()]


# --- independent references: per-head q, k, v and the output projection, from the model's own modules ---------


def eye_out(linear, d):
    """(d_in, out) map of a Linear or Conv1D module: its output on the identity, minus its bias."""
    with torch.no_grad():
        x = torch.eye(d)[None]
        return (linear(x) - linear(torch.zeros_like(x)))[0]


def heads_gpt2(model, i):
    attn = model.transformer.h[i].attn
    out = eye_out(attn.c_attn, D)  # (d, 3d), as GPT2Attention.forward splits it
    q, k, v = out.split(attn.split_size, dim=1)
    per_head = [t.view(D, attn.num_heads, attn.head_dim).permute(1, 2, 0) for t in (q, k, v)]
    return (*per_head, eye_out(attn.c_proj, attn.embed_dim).T)  # o as out x in


def heads_neox(model, i):
    attn = model.gpt_neox.layers[i].attention
    out = eye_out(attn.query_key_value, D)  # GPTNeoXAttention.forward: view(..., -1, 3 * head_dim).chunk(3)
    q, k, v = out.view(D, -1, 3 * attn.head_size).chunk(3, dim=-1)
    return (*(t.permute(1, 2, 0) for t in (q, k, v)), attn.dense.weight.detach())


def heads_llama(model, i):
    """q (H, dh, d); k and v per query head through transformers' own repeat_kv."""
    from transformers.models.llama.modeling_llama import repeat_kv

    layers = model.model.layers if hasattr(model, "model") else model.transformer.h
    attn = layers[i].self_attn
    cfg = model.config
    dh = cfg.hidden_size // cfg.num_attention_heads if not getattr(cfg, "head_dim", None) else cfg.head_dim
    n_rep = cfg.num_attention_heads // cfg.num_key_value_heads

    def per_query_head(w):
        kv = w.detach().view(-1, dh, cfg.hidden_size)[None]  # (1, H_kv, dh, d)
        return repeat_kv(kv, n_rep)[0]

    q = attn.q_proj.weight.detach().view(-1, dh, cfg.hidden_size)
    return q, per_query_head(attn.k_proj.weight), per_query_head(attn.v_proj.weight), attn.o_proj.weight.detach()


def heads_bloom(model, i):
    attn = model.transformer.h[i].self_attention
    q, k, v = attn._reshape(eye_out(attn.query_key_value, D)[None])  # (1, H, d, dh)
    return (*(t[0].transpose(1, 2) for t in (q, k, v)), attn.dense.weight.detach())


def heads_falcon(model, i):
    attn = model.transformer.h[i].self_attention
    q, k, v = attn._split_heads(eye_out(attn.query_key_value, D)[None])  # (1, d, heads, dh)
    H_ = attn.num_heads
    q, k, v = (t[0].reshape(D, -1, attn.head_dim).permute(1, 2, 0) for t in (q, k, v))
    k, v = (t.expand(H_, -1, -1) if t.shape[0] == 1 else t for t in (k, v))  # multi-query: one k, v for all
    return q, k, v, attn.dense.weight.detach()


def separate_heads(attn, o_name):
    """q (H, dh, d), and k, v per query head, from separate projections without GQA; the output projection."""

    def heads(w):
        return w.weight.detach().view(H, D // H, D)

    return heads(attn.q_proj), heads(attn.k_proj), heads(attn.v_proj), getattr(attn, o_name).weight.detach()


def heads_opt(model, i):
    return separate_heads(model.model.decoder.layers[i].self_attn, "out_proj")


def heads_phi(model, i):
    return separate_heads(model.model.layers[i].self_attn, "dense")


def heads_gptj(model, i):
    return separate_heads(model.transformer.h[i].attn, "out_proj")


def qk_reference(q, k):
    """mean over query heads h of |<u_q,h,i, u_k,h,i>| (k given per query head), numpy float64 SVDs."""
    per_head = []
    for qh, kh in zip(q.numpy().astype(np.float64), k.numpy().astype(np.float64)):
        Uq = np.linalg.svd(qh, full_matrices=False)[0]
        Uk = np.linalg.svd(kh, full_matrices=False)[0]
        per_head.append(np.abs(np.sum(Uq * Uk, axis=0)))
    return np.mean(per_head, axis=0)


def vo_reference(v, o):
    """|<v_i of o, u_i of the value map>|: o reads the values of every query head, concatenated."""
    Wv = v.reshape(-1, v.shape[-1]).numpy().astype(np.float64)
    Uv = np.linalg.svd(Wv, full_matrices=False)[0]
    Vo = np.linalg.svd(o.numpy().astype(np.float64), full_matrices=False)[2].T
    r = min(np.linalg.matrix_rank(Wv), Vo.shape[1])  # past its rank (GQA repeats heads) U is arbitrary
    return np.abs(np.sum(Uv[:, :r] * Vo[:, :r], axis=0))


def diag_ref(U, V):
    r = min(U.shape[1], V.shape[1])
    return np.abs(np.sum(U[:, :r] * V[:, :r], axis=0))


def check_pair(store, name, refs, what):
    got = store.alignment(name)
    assert got.shape[0] == len(refs)
    for row, ref in zip(got, refs):
        n = min(len(ref), np.isfinite(row).sum())
        assert n == len(ref), f"{what}: {n} ranks stored, {len(ref)} expected"
        err = np.max(np.abs(row[:n] - ref[:n]))
        assert err < TOL, f"{what}: max |stored - reference| = {err:.2e}"
    return float(np.max([np.max(np.abs(r[: len(f)] - f)) for r, f in zip(got, refs)]))


# --- the checks every family gets -------------------------------------------------------------------------------


def expected_order(model, rename=lambda n: n):
    """The model's own depth order: named_parameters() (tied aliases dropped), ndim >= 2, as checkpoint names."""
    return [rename(n) for n, p in model.named_parameters() if p.ndim >= 2]


def check_orientation(store, model, rename=lambda n: n):
    """Rows are outputs: every stored U is the left singular basis of the module's (out x in) weight."""
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        owner = modules[name.rpartition(".")[0]]
        W = p.detach().numpy().astype(np.float64)
        if type(owner).__name__ == "Conv1D":  # y = x W + b: W is in x out
            W = W.T
        elif isinstance(owner, torch.nn.Embedding):
            continue  # stored as vocab x d (docs/method.md 0.2)
        spec = store.matrix_spec(rename(name))
        assert spec.shape == W.shape, (name, spec.shape, W.shape)
        U = np.linalg.svd(W, full_matrices=False)[0]
        stored = store.U(rename(name))[-1]
        assert abs(np.dot(U[:, 0], stored[:, 0])) > 1 - 1e-4, name


def check_family(store, model, rename=lambda n: n, tied_head=False):
    """Order, orientation, and a depth axis from the embedding to the head (a tied head: the last pair's next)."""
    assert store.matrices == expected_order(model, rename)
    kinds = [store.matrix_spec(n).kind for n in store.matrices]
    assert kinds[0] in ("embedding", "conv")
    assert "head" not in kinds[:-1]
    if tied_head:
        last = store.pair_docs()[-1]
        assert last["tied_as"] in store.attrs["tied"] and store.matrix_spec(last["next"]).kind == "embedding"
    else:
        assert kinds[-1] == "head"
    check_orientation(store, model, rename)
    assert store.attrs["structure"].startswith("model definition")


def families_without_trainer():
    return ["llama_untied", "mistral", "qwen2", "opt", "bloom", "falcon", "falcon_mqa", "phi", "gptj"]


HEADS = {
    "gpt2": heads_gpt2, "gpt_neox": heads_neox, "llama_gqa_tied": heads_llama, "llama_untied": heads_llama,
    "mistral": heads_llama, "qwen2": heads_llama, "bloom": heads_bloom, "falcon": heads_falcon,
    "falcon_mqa": heads_falcon, "opt": heads_opt, "phi": heads_phi, "gptj": heads_gptj,
}  # fmt: skip


def attention_pairs(store, family, layer):
    """(query-key pair, value-output pair) names of one layer, found from the store's own pair list."""
    docs = [p for p in store.pair_docs() if f".{layer}." in p["prev"]]
    qk = next(p["name"] for p in docs if p["kind"] == "qk")
    vo = next(p["name"] for p in docs if p["prev"] != p["next"] and (p["kind"] == "vo" or "v_proj" in p["prev"]))
    return qk, vo


def check_heads(store, models, family, layers):
    """The stored qk and vo alignment against the per-head computation from the model's modules, every checkpoint."""
    worst = 0.0
    for layer in range(layers):
        qk, vo = attention_pairs(store, family, layer)
        refs = [HEADS[family](m, layer) for m in models]
        worst = max(worst, check_pair(store, qk, [qk_reference(q, k) for q, k, _, _ in refs], f"{family} {qk}"))
        worst = max(worst, check_pair(store, vo, [vo_reference(v, o) for _, _, v, o in refs], f"{family} {vo}"))
    return worst


def neox_rename(name):
    """GPT-NeoX checkpoints keep the LM head's legacy name `embed_out` (the model calls it `lm_head`)."""
    return "embed_out.weight" if name == "lm_head.weight" else name


# --- Done when: GPT-NeoX, Llama-GQA and GPT-2 trained with the real Trainer ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt_neox", "llama_gqa_tied", "gpt2"])
def test_trainer_series_heads_match_model_definition(tmp_path, family, one_thread, capsys):
    cls, config = configs()[family]
    run = tmp_path / "run"
    trainer_series(run, cls, config)
    store = analyzed(run)
    assert list(store.steps) == [10, 20, 30, 40]
    models = loaded(cls, store)
    rename = neox_rename if family == "gpt_neox" else (lambda n: n)
    check_family(store, models[-1], rename, tied_head=bool(config.tie_word_embeddings))
    worst = check_heads(store, models, family, config.num_hidden_layers if family != "gpt2" else config.n_layer)
    print(f"{family}: max |stored - reference| over qk and vo pairs = {worst:.2e}")
    # depth axis: the embedding first, the head (or the tied embedding, once) last
    assert store.matrix_spec(store.matrices[0]).kind == "embedding"
    last_pair = store.pair_docs()[-1]
    if family == "llama_gqa_tied":
        assert store.attrs["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
        assert last_pair["tied_as"] == "lm_head.weight" and last_pair["next"] == "model.embed_tokens.weight"
        assert store.attrs["kv_heads"] == 2 and store.attrs["heads"] == 4
    elif family == "gpt2":
        assert store.attrs["tied"] == {"lm_head.weight": "transformer.wte.weight"}
        assert store.matrix_spec("transformer.h.0.attn.c_attn.weight").orientation.startswith("transposed")
        # c_fc -> c_proj: c_fc's output side against c_proj's input side, each Conv1D read as out x in
        refs = []
        for m in models:
            mlp = m.transformer.h[0].mlp
            U = np.linalg.svd(eye_out(mlp.c_fc, D).T.numpy().astype(np.float64), full_matrices=False)[0]
            W = eye_out(mlp.c_proj, mlp.c_proj.weight.shape[0]).T.numpy().astype(np.float64)
            refs.append(diag_ref(U, np.linalg.svd(W, full_matrices=False)[2].T))
        check_pair(store, "transformer.h.0.mlp.c_fc.weight -> transformer.h.0.mlp.c_proj.weight", refs, "gpt2 mlp")
    else:
        assert store.matrix_spec(store.matrices[-1]).kind == "head"
        assert store.matrix_spec(last_pair["next"]).kind == "head"


# --- every other family, saved by save_pretrained -----------------------------------------------------------------


@pytest.mark.parametrize("family", families_without_trainer())
def test_family_order_orientation_and_heads(tmp_path, family, one_thread):
    cls, config = configs()[family]
    run = tmp_path / "run"
    save_series(run, cls, config)
    store = analyzed(run)
    models = loaded(cls, store)
    check_family(store, models[-1], tied_head=bool(config.tie_word_embeddings))
    worst = check_heads(store, models, family, config.num_hidden_layers)
    print(f"{family}: max |stored - reference| over qk and vo pairs = {worst:.2e}")
    assert sum(p["kind"] == "qk" for p in store.pair_docs()) == config.num_hidden_layers


def test_gptj_separate_heads_and_parallel_block(tmp_path, one_thread):
    """Separate q/k projections (GPT-J registers k, v, q): the qk pair is q -> k, per head, from the weights."""
    cls, config = configs()["gptj"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    store = analyzed(run)
    models = loaded(cls, store)
    dh = D // H
    refs = [qk_reference(*(getattr(m.transformer.h[0].attn, n).weight.detach().view(H, dh, D)
                           for n in ("q_proj", "k_proj"))) for m in models]  # fmt: skip
    check_pair(store, "transformer.h.0.attn.q_proj.weight -> transformer.h.0.attn.k_proj.weight", refs, "gptj qk")
    # parallel block: the MLP reads the block input (the embedding), not the attention output
    names = store.pairs
    assert "transformer.wte.weight -> transformer.h.0.mlp.fc_in.weight" in names
    assert "transformer.h.0.attn.out_proj.weight -> transformer.h.0.mlp.fc_in.weight" not in names


def test_sharded_and_tied_bert(tmp_path, one_thread):
    """BERT saved in shards: the index's names, the model's order; the MLM decoder is the tied word embedding."""
    cls, config = configs()["bert"]
    run = tmp_path / "run"
    save_series(run, T.BertForMaskedLM, config, shard=True)
    assert (run / "checkpoint-5" / "model.safetensors.index.json").is_file()
    store = analyzed(run)
    model = T.BertForMaskedLM.from_pretrained(store.checkpoint_paths()[-1])
    check_family(store, model, tied_head=True)
    assert store.attrs["tied"] == {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}
    last = store.pair_docs()[-1]
    assert last["name"] == "cls.predictions.transform.dense.weight -> cls.predictions.decoder.weight"
    assert last["next"] == "bert.embeddings.word_embeddings.weight"
    # the tied head's input space is the embedding's d side: V of the embedding against U of the transform
    emb = model.bert.embeddings.word_embeddings.weight.detach().numpy().astype(np.float64)
    tr = model.cls.predictions.transform.dense.weight.detach().numpy().astype(np.float64)
    U = np.linalg.svd(tr)[0]
    Ve = np.linalg.svd(emb, full_matrices=False)[2].T
    np.testing.assert_allclose(store.alignment(last["name"])[-1][:D], np.abs(np.sum(U * Ve, axis=0)), atol=TOL)


def test_bert_classifier(tmp_path, one_thread):
    cls, config = configs()["bert"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    store = analyzed(run)
    models = loaded(cls, store)
    check_family(store, models[-1])
    assert store.pairs[-2:] == [
        "bert.encoder.layer.1.output.dense.weight -> bert.pooler.dense.weight",
        "bert.pooler.dense.weight -> classifier.weight",
    ]
    attn = models[-1].bert.encoder.layer[0].attention.self
    dh = D // H
    refs = [qk_reference(*(getattr(m.bert.encoder.layer[0].attention.self, n).weight.detach().view(H, dh, D)
                           for n in ("query", "key"))) for m in models]  # fmt: skip
    assert attn.num_attention_heads == H
    check_pair(store, "bert.encoder.layer.0.attention.self.query.weight -> bert.encoder.layer.0.attention.self.key.weight",
               refs, "bert qk")  # fmt: skip


def test_t5_encoder_decoder(tmp_path, one_thread):
    cls, config = configs()["t5"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    store = analyzed(run)
    models = loaded(cls, store)
    check_family(store, models[-1], tied_head=True)
    assert set(store.attrs["tied"]) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    enc_out = "encoder.block.0.layer.1.DenseReluDense.wo.weight"
    cross = "decoder.block.0.layer.1.EncDecAttention"
    assert f"{enc_out} -> {cross}.k.weight" in store.pairs and f"{enc_out} -> {cross}.v.weight" in store.pairs
    assert f"decoder.block.0.layer.0.SelfAttention.o.weight -> {cross}.q.weight" in store.pairs
    assert store.pairs[-1] == "decoder.block.0.layer.2.DenseReluDense.wo.weight -> lm_head.weight"
    refs = [qk_reference(*(getattr(m.decoder.block[0].layer[1].EncDecAttention, n).weight.detach().view(H, 8, D)
                           for n in ("q", "k"))) for m in models]  # fmt: skip
    check_pair(store, f"{cross}.q.weight -> {cross}.k.weight", refs, "t5 cross qk")


VIT_NAMES = {  # the installed ViT's module names -> the names its checkpoints are saved under
    "vit.layers.": "vit.encoder.layer.", "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key", "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
}  # fmt: skip


def vit_rename(name):
    for a, b in VIT_NAMES.items():
        name = name.replace(a, b)
    return name


def test_vit_tokens_and_patches(tmp_path, one_thread):
    cls, config = configs()["vit"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    store = analyzed(run)
    model = cls.from_pretrained(store.checkpoint_paths()[-1])
    names = dict(model.named_parameters())
    rename = vit_rename if "vit.layers.0.mlp.fc1.weight" in names else (lambda n: n)
    check_family(store, model, rename=rename)
    pos = store.matrix_spec("vit.embeddings.position_embeddings")
    assert pos.original_shape == (1, 17, D) and pos.shape == (17, D) and pos.kind == "embedding"
    s = np.linalg.svd(names["vit.embeddings.position_embeddings"].detach()[0].numpy().astype(np.float64))[1]
    np.testing.assert_allclose(store.sv("vit.embeddings.position_embeddings")[-1], s, rtol=1e-5)
    assert store.matrix_spec("vit.embeddings.cls_token").shape == (1, D)
    first = store.pairs[0]
    assert first.startswith("vit.embeddings.patch_embeddings.projection.weight -> ")


def test_pairs_file_round_trip_and_errors(tmp_path, one_thread, capsys):
    """--pairs accepts every pair name auto-pairing writes (heads, GQA value rows, tied heads); a bad line is a
    one-line error naming it, exit 1, and no store is made."""
    from typer.testing import CliRunner

    from specdyn.cli import app

    cls, config = configs()["llama_gqa_tied"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    auto = analyzed(run)
    pairs = assert_pairs_file_round_trip(run, auto, tmp_path)
    pairs.write_text(
        "model.layers.0.self_attn.q_proj.weight -> model.layers.0.self_attn.k_proj.weight\n"
        "model.layers.0.self_attn.k_proj.weight -> model.layers.0.mlp.down_proj.weight\n"
    )
    out = tmp_path / "bad.zarr"
    res = CliRunner().invoke(app, ["analyze", str(run), "--out", str(out), "--alignment-pairs", str(pairs)])
    assert res.exit_code == 1
    assert f"{pairs}:2:" in res.output and "does not feed" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_info_shows_kind_and_orientation(tmp_path, one_thread):
    from typer.testing import CliRunner

    from specdyn.cli import app

    cls, config = configs()["gpt2"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    analyzed(run)
    res = CliRunner().invoke(app, ["info", str(run), "--json"])
    doc = json.loads(res.stdout)
    rows = {m["name"]: m for m in doc["matrices"]}
    assert rows["transformer.h.0.attn.c_attn.weight"]["orientation"] == "transposed from Conv1D (in x out)"
    assert rows["transformer.h.0.attn.c_attn.weight"]["kind"] == "attention_in_proj"
    assert rows["transformer.h.0.attn.c_attn.weight"]["fused"] == {"layout": "blocks", "heads": 4, "kv_heads": 4}
    assert rows["transformer.wte.weight"]["orientation"] == "rows=outputs"
    assert doc["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["info", str(run)])
    assert "transposed (Conv1D)" in res.output and "attention_in_proj (blocks)" in res.output
    assert "lm_head.weight = transformer.wte.weight" in res.output


def test_without_transformers_structure_is_guessed(tmp_path, monkeypatch, one_thread):
    """No transformers: today's behaviour (natural sort, kinds from names), said in a warning and in the store."""
    import builtins

    cls, config = configs()["gpt2"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name.split(".")[0] == "transformers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    store = analyzed(run)
    assert store.attrs["structure"] == "guessed from names and shapes"
    assert store.attrs["tied"] == {}


def test_old_gpt2_bin_with_tied_head_and_mask_buffers(tmp_path, one_thread):
    """A pytorch_model.bin as older transformers wrote it: `lm_head.weight` stored beside `wte` and a causal-mask
    `attn.bias` per block. The head is the tied alias (analyzed once), the masks are not weights."""
    cls, config = configs()["gpt2"]
    torch.manual_seed(0)
    model = cls(config)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    for i in range(config.n_layer):
        sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
    run = tmp_path / "run"
    for step in (0, 1):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        config.save_pretrained(folder)
        torch.save(sd, folder / "pytorch_model.bin")
    store = analyzed(run)
    assert store.matrices == expected_order(model) and len(store.matrices) == 2 + 4 * config.n_layer
    assert store.attrs["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert set(store.attrs["refused"]) == {f"transformer.h.{i}.attn.bias" for i in range(config.n_layer)}
    check_orientation(store, model)
    assert store.pairs[-1] == f"transformer.h.{config.n_layer - 1}.mlp.c_proj.weight -> lm_head.weight"


def test_store_without_the_new_attrs_still_reads(tmp_path, one_thread):
    """A store made before `orientation`, `fused`, `structure` and `tied` existed reads as rows=outputs, blocks."""
    import zarr
    from typer.testing import CliRunner

    from specdyn.cli import app

    cls, config = configs()["gpt_neox"]
    run = tmp_path / "run"
    save_series(run, cls, config)
    store = analyzed(run)
    qk = store.pairs[1]
    root = zarr.open_group(str(run / "specdyn.zarr"), mode="r+")
    matrix = root["matrix"]
    attrs = {k: v for k, v in matrix.attrs.items() if k not in ("orientation", "fused")}
    matrix.attrs.clear()
    matrix.attrs.update(attrs)
    meta = {k: v for k, v in root.attrs["specdyn"].items() if k not in ("structure", "tied", "refused", "kv_heads")}
    root.attrs["specdyn"] = meta
    old = open_store(run / "specdyn.zarr")
    spec = old.matrix_spec("gpt_neox.layers.0.attention.query_key_value.weight")
    assert spec.orientation == "rows=outputs" and spec.fused is None and spec.kind == "attention_in_proj"
    assert old.pair_spec(qk).heads == 4
    res = CliRunner().invoke(app, ["info", str(run), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["structure"].startswith("not recorded")
