"""Checkpoints without a config.json (docs/architectures.md, steps 2 and 3): every guess is said on stderr once
per store whatever the format, tensors that share storage in a torch file are one (tied) matrix, and the GPT
layouts that shapes decide (GPT-2's Conv1D, GPT-BigCode's multi-query c_attn) are read as the model's own
modules compute them."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.test_architectures import D, H, V, analyzed, check_orientation, check_pair, eye_out, vo_reference

T = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)
pytestmark = pytest.mark.usefixtures("one_thread")


def torch_series(run, model, steps=(0, 1)) -> list[dict]:
    """`torch.save(model.state_dict())` at each step (weights moved between saves); the state dicts saved."""
    run.mkdir(parents=True)
    torch.manual_seed(1)
    states = []
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        torch.save(model.state_dict(), run / f"step_{step}.pt")
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


def guess_lines(recwarn) -> list[str]:
    """The guess warnings analyze gave (through the API they are Python warnings; the CLI prints them)."""
    return [str(w.message) for w in recwarn if "no model definition" in str(w.message)]


def test_bigcode_mqa_torch_file_is_tied_once_and_split_as_its_forward(tmp_path, recwarn):
    torch.manual_seed(0)
    config = T.GPTBigCodeConfig(n_embd=D, n_layer=1, n_head=H, vocab_size=V, n_positions=16, multi_query=True)
    model = T.GPTBigCodeForCausalLM(config)
    states = torch_series(tmp_path / "run", model)
    st = analyzed(tmp_path / "run")
    assert st.attrs["tied"] == {"lm_head.weight": "transformer.wte.weight"}  # shared storage: one matrix
    assert "lm_head.weight" not in st.matrices
    (line,) = guess_lines(recwarn)  # once per store, not per checkpoint
    assert "registration order" in line and "multi-query" in line
    refs = []
    attn = model.transformer.h[0].attn
    for state in states:
        model.load_state_dict(state)
        # GPTBigCodeAttention.forward: c_attn(x).split((embed_dim, kv_dim, kv_dim)); every query head reads v
        _, _, v = eye_out(attn.c_attn, D).split((attn.embed_dim, attn.kv_dim, attn.kv_dim), dim=1)
        refs.append(vo_reference(v.T[None].repeat(H, 1, 1), eye_out(attn.c_proj, D).T))
    check_pair(st, "transformer.h.0.attn.c_attn.weight -> transformer.h.0.attn.c_proj.weight", refs, "bigcode vo")


def test_gpt2_torch_file_is_transposed_and_the_guesses_are_said(tmp_path, recwarn):
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=D, n_layer=1, n_head=H, vocab_size=V, n_positions=16))
    torch_series(tmp_path / "run", model)
    st = analyzed(tmp_path / "run")
    check_orientation(st, model)  # Conv1D weights analyzed out x in, as the module computes
    assert st.attrs["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    (line,) = guess_lines(recwarn)
    assert "GPT-2 blocks" in line and "no head count" in line


def test_bigcode_mha_torch_file_says_its_split_is_a_guess(tmp_path, recwarn):
    torch.manual_seed(0)
    config = T.GPTBigCodeConfig(n_embd=D, n_layer=1, n_head=H, vocab_size=V, n_positions=16, multi_query=False)
    torch_series(tmp_path / "run", T.GPTBigCodeForCausalLM(config))
    analyzed(tmp_path / "run")
    (line,) = guess_lines(recwarn)  # nanoGPT (blocks) and GPT-BigCode (per head) have the same names and shapes
    assert "[q; k; v] blocks" in line and "GPT-BigCode" in line


def test_safetensors_without_config_says_order_is_guessed(tmp_path, recwarn):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    run.mkdir()
    g = torch.Generator().manual_seed(0)
    for step in (1, 2):
        save_file(
            {f"layers.{i}.weight": torch.randn(8, 8, generator=g) for i in (2, 10)}, run / f"step_{step}.safetensors"
        )
    st = analyzed(run)
    assert st.matrices == ["layers.2.weight", "layers.10.weight"]
    (line,) = guess_lines(recwarn)
    assert "natural sort" in line and "2 linear" in line
