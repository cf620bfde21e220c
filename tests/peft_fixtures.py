"""Tiny bases built offline from configs (Llama with GQA, GPT-2 with Conv1D) and adapter series trained with the
real `peft`: a few optimizer steps between saves, each save a Trainer-style `checkpoint-N/` folder, with the
weights of peft's own `merge_and_unload()` at every save as the reference."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

VOCAB = 40


def tiny_base(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "llama":  # GQA: 4 query heads, 2 key/value heads
            cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                              tie_word_embeddings=False)  # fmt: skip
            return LlamaForCausalLM(cfg)
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                         eos_token_id=0)  # fmt: skip
        return GPT2LMHeadModel(cfg)


def save_base(kind: str, folder: Path):
    model = tiny_base(kind)
    model.save_pretrained(folder)
    return model


def train_series(base, run: Path, config, saves=(2, 4, 6), lr=0.05, seed=1) -> dict[int, dict[str, torch.Tensor]]:
    """Train a LoRA (a peft config) or a full fine-tune (config None) of a copy of `base`; save
    `run/checkpoint-N` after step N of `saves`. Returns {step: merged state dict} (peft's merge_and_unload)."""
    import peft

    model = copy.deepcopy(base)
    if config is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the adapter's initial A
            model = peft.get_peft_model(model, config)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    merged, step = {}, 0
    for target in saves:
        while step < target:
            ids = torch.randint(0, VOCAB, (2, 12), generator=gen)
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        folder = run / f"checkpoint-{step}"
        model.save_pretrained(folder)
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        if config is not None:
            unloaded = copy.deepcopy(model).merge_and_unload()
            merged[step] = {k: v.detach().clone() for k, v in unloaded.state_dict().items()}
        else:
            merged[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return merged
