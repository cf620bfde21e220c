"""Alignment pairs: discovery on small models and the alignment diagonal against docs/method.md's own recipe."""

import numpy as np
import pytest
import torch

from specdyn.errors import SpecdynError
from specdyn.spectral.matrices import MatrixSpec, classify, select_matrices
from specdyn.spectral.pairs import find_pairs, pair_diag, read_pairs_file, slice_needs, slice_vectors
from specdyn.spectral.svd import SVDEngine


def specs_of(model: torch.nn.Module):
    return select_matrices({k: tuple(v.shape) for k, v in model.state_dict().items()})


class Transformer(torch.nn.Module):
    """modadd's shape: embedding, fused MHA, MLP, decoder (docs/method.md: 6 pairs, one QK)."""

    def __init__(self, d=16, heads=4, vocab=11):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.attn = torch.nn.MultiheadAttention(d, heads, bias=False)
        self.linear1 = torch.nn.Linear(d, 4 * d)
        self.linear2 = torch.nn.Linear(4 * d, d)
        self.decoder = torch.nn.Linear(d, vocab)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3)
        self.conv2 = torch.nn.Conv2d(8, 12, 3)
        self.fc = torch.nn.Linear(12, 10)


def test_kinds():
    assert classify("embed.weight", (11, 16)) == "embedding"
    assert classify("attn.in_proj_weight", (48, 16)) == "attention_in_proj"
    assert classify("conv.weight", (8, 3, 3, 3)) == "conv"
    assert classify("up.tconv1.weight", (8, 4, 2, 2)) == "tconv"
    assert classify("rnn.weight_hh_l0", (32, 8)) == "lstm"
    spec = MatrixSpec("up.tconv1.weight", (8, 4, 2, 2), "tconv")
    assert spec.shape == (4, 32) and spec.in_channels == 8
    t = torch.randn(8, 4, 2, 2)
    np.testing.assert_array_equal(spec.flatten(t), t.transpose(0, 1).reshape(4, 32).numpy())


def test_transformer_pairs_follow_method_md():
    specs = specs_of(Transformer())
    pairs = find_pairs(specs, n_heads=4)
    got = {(p.prev, p.next, p.kind) for p in pairs}
    assert got == {
        ("embed.weight", "attn.in_proj_weight", "embedding"),
        ("attn.in_proj_weight", "attn.in_proj_weight", "qk"),
        ("attn.in_proj_weight", "attn.out_proj.weight", "vo"),
        ("attn.out_proj.weight", "linear1.weight", "plain"),
        ("linear1.weight", "linear2.weight", "plain"),
        ("linear2.weight", "decoder.weight", "plain"),
    }
    assert len(find_pairs(specs, n_heads=None)) == 5  # no heads known: no QK pair


def test_conv_and_lstm_pairs():
    assert [(p.prev, p.next, p.kind) for p in find_pairs(specs_of(ConvNet()), None)] == [
        ("conv1.weight", "conv2.weight", "plain"),
        ("conv2.weight", "fc.weight", "plain"),
    ]
    lstm = torch.nn.Sequential(torch.nn.LSTM(6, 8, num_layers=2), torch.nn.Linear(8, 3))
    kinds = [(p.prev.split(".")[-1], p.next.split(".")[-1], p.kind) for p in find_pairs(specs_of(lstm), None)]
    assert kinds == [  # the paper's LSTM pairs (docs/method.md 1.6): no ih -> hh in the last layer
        ("weight_ih_l0", "weight_hh_l0", "lstm_gate"),
        ("weight_ih_l0", "weight_ih_l1", "lstm_gate"),
        ("weight_hh_l0", "weight_ih_l1", "lstm_gate"),
        ("weight_ih_l1", "weight", "lstm_gate"),
        ("weight_hh_l1", "weight", "lstm_gate"),
    ]


def full_svd(W):
    U, s, Vh = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    return U, Vh


def compute(specs, pairs, weights, heads=None):
    eng = SVDEngine(top=64)
    by = {s.name: s for s in specs}
    spectra = {s.name: eng(s.flatten(weights[s.name])) for s in specs}
    needs = slice_needs(pairs, specs)
    slices = {n: slice_vectors(by[n].flatten(weights[n]), by[n], needs[n], heads, eng) for n in needs}
    return {p.name: pair_diag(p, by, spectra, slices) for p in pairs}


def test_conv_alignment_matches_method_md_centre_tap():
    torch.manual_seed(0)
    net = ConvNet()
    specs = specs_of(net)
    w = net.state_dict()
    diags = compute(specs, find_pairs(specs, None), w)
    # docs/method.md 1.6: Vh2 (k2, c_in*kh*kw) -> (k2, c_in, kh, kw) -> (kh, kw, k2, c_in) @ U1 (c_in, k1), centre tap
    U1, _ = full_svd(w["conv1.weight"].flatten(1).numpy())
    _, Vh2 = full_svd(w["conv2.weight"].flatten(1).numpy())
    A = np.abs(Vh2.reshape(-1, 8, 3, 3).transpose(2, 3, 0, 1) @ U1)[1, 1]
    np.testing.assert_allclose(diags["conv1.weight -> conv2.weight"], np.diag(A)[:8], atol=1e-4)


def test_transformer_alignment_matches_direct_computation():
    torch.manual_seed(0)
    net = Transformer()
    specs = specs_of(net)
    w = net.state_dict()
    diags = compute(specs, find_pairs(specs, 4), w, heads=4)
    d, H, dh = 16, 4, 4
    W = w["attn.in_proj_weight"].numpy()
    # embedding: its right (d-side) vectors stand in for U
    _, Vh_emb = full_svd(w["embed.weight"].numpy())
    _, Vh_in = full_svd(W)
    ref = np.abs(np.sum(Vh_in.T[:, :11] * Vh_emb.T[:, :11], axis=0))
    np.testing.assert_allclose(diags["embed.weight -> attn.in_proj_weight"], ref, atol=1e-4)
    # V -> O through the value rows
    Uv, _ = full_svd(W[-d:])
    _, Vh_o = full_svd(w["attn.out_proj.weight"].numpy())
    np.testing.assert_allclose(
        diags["attn.in_proj_weight -> attn.out_proj.weight"], np.abs(np.sum(Uv * Vh_o.T, axis=0)), atol=1e-4
    )
    # QK: per-head left vectors of W_q and W_k, diagonal averaged over heads
    per_head = []
    for h in range(H):
        Uq, _ = full_svd(W[:d].reshape(H, dh, d)[h])
        Uk, _ = full_svd(W[d : 2 * d].reshape(H, dh, d)[h])
        per_head.append(np.diag(np.abs(Uq.T @ Uk)))
    np.testing.assert_allclose(diags["attn.in_proj_weight (qk)"], np.mean(per_head, axis=0), atol=1e-4)


def test_identity_alignment_is_one():
    W = np.random.default_rng(0).standard_normal((10, 10)).astype(np.float32)
    specs = [MatrixSpec("a.weight", (10, 10), "linear"), MatrixSpec("b.weight", (10, 10), "linear")]
    pairs = find_pairs(specs, None)
    diag = compute(specs, pairs, {"a.weight": torch.from_numpy(W), "b.weight": torch.from_numpy(W.T.copy())})
    np.testing.assert_allclose(diag["a.weight -> b.weight"], 1.0, atol=1e-5)


def test_pairs_file(tmp_path):
    specs = specs_of(ConvNet())
    f = tmp_path / "pairs.txt"
    f.write_text("# skip connection\nconv1.weight -> fc.weight\n")
    with pytest.raises(SpecdynError, match="does not feed"):
        read_pairs_file(f, specs, None)
    f.write_text("conv1.weight conv2.weight\n\nconv2.weight fc.weight  # ok\n")
    assert [p.kind for p in read_pairs_file(f, specs, None)] == ["plain", "plain"]
    f.write_text("conv1.weight nope.weight\n")
    with pytest.raises(SpecdynError, match="unknown matrix"):
        read_pairs_file(f, specs, None)
    with pytest.raises(SpecdynError, match="cannot read"):
        read_pairs_file(tmp_path / "missing.txt", specs, None)
