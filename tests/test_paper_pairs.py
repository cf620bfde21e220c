"""The paper's own pair lists (docs/method.md 1.6) on series from `specdyn train`: the bidirectional LSTM's 22 pairs
(4 layers; a bidirectional next read through its own direction's half of the 2H input) and the UNet's 17 (skips
through the second half of a decoder tconv's input), each checked against numpy SVDs of the saved weights."""

import numpy as np
import pytest
from safetensors.torch import load_file

from specdyn import open_store
from specdyn.analyze import AnalyzeOptions, analyze
from specdyn.train import train
from tests.test_tasks import small

pytestmark = pytest.mark.usefixtures("one_thread")


def svd(W):
    U, s, Vh = np.linalg.svd(np.asarray(W, dtype=np.float64), full_matrices=False)
    return U, Vh.T


def diag(U, V):
    r = min(U.shape[1], V.shape[1])
    return np.abs(np.sum(U[:, :r] * V[:, :r], axis=0))


def series(tmp_path, task):
    run = tmp_path / "run"
    train(task, run, every=2, show_progress=False)
    analyze([run], options=AnalyzeOptions(), show_progress=False)
    st = open_store(run / "specdyn.zarr")
    return st, load_file(str(sorted(run.glob("step_*.safetensors"))[-1]))


def test_bilstm_22_pairs(tmp_path):
    H = 8
    st, w = series(tmp_path, small("lstm", n_layers=4, hidden=H, steps=2))
    ih = "lstm.weight_ih_l{}{}"
    hh = "lstm.weight_hh_l{}{}"
    expected = []
    for layer in range(3):
        for r in ("", "_reverse"):
            half = "[:, 8:16]" if r else "[:, 0:8]"
            expected += [
                f"{ih.format(layer, r)} -> {hh.format(layer, r)}",
                f"{ih.format(layer, r)} -> {ih.format(layer + 1, r)}{half}",
                f"{hh.format(layer, r)} -> {ih.format(layer + 1, r)}{half}",
            ]
    for r in ("", "_reverse"):
        half = "[:, 8:16]" if r else "[:, 0:8]"
        expected += [f"{ih.format(3, r)} -> linear.weight{half}", f"{hh.format(3, r)} -> linear.weight{half}"]
    assert st.pairs == expected and len(expected) == 22
    # hh_l1 (reverse) -> ih_l2 (reverse): gate g of U (rows [2H, 3H)) against the SVD of ih_l2's reverse half
    U = svd(w["lstm.weight_hh_l1_reverse"].numpy())[0][2 * H : 3 * H]
    V = svd(w["lstm.weight_ih_l2_reverse"].numpy()[:, H:])[1]
    name = "lstm.weight_hh_l1_reverse -> lstm.weight_ih_l2_reverse[:, 8:16]"
    np.testing.assert_allclose(st.alignment(name)[-1][:H], diag(U, V), atol=1e-4)
    U = svd(w["lstm.weight_ih_l3"].numpy())[0][2 * H : 3 * H]
    V = svd(w["linear.weight"].numpy()[:, :H])[1]
    got = st.alignment("lstm.weight_ih_l3 -> linear.weight[:, 0:8]")[-1]
    np.testing.assert_allclose(got[: V.shape[1]], diag(U, V), atol=1e-4)


def centre(V, c_in, kernel=(3, 3)):
    """Rows of V (c_in * kh * kw) at the centre tap (docs/method.md 1.6)."""
    return V.reshape(c_in, *kernel, -1)[:, kernel[0] // 2, kernel[1] // 2]


def test_unet_17_pairs(tmp_path):
    st, w = series(tmp_path, small("unet", steps=2))
    c1, c3 = 4, 8  # channels (4, 4, 8, 8) of the small config
    assert len(st.pairs) == 17 and st.attrs["architecture"] == "specdyn:unet"
    assert "conv3.weight -> tconv3.weight[:, 8:16]" in st.pairs
    assert "tconv4.weight -> tconv3.weight[:, 0:8]" in st.pairs
    assert "dense4.weight -> tconv4.weight" in st.pairs and "conv4.weight -> tconv4.weight" in st.pairs

    def tconv_cols(name, lo, hi):  # stored (c_in, c_out, kh, kw): transposed, then its input channels lo..hi
        t = w[name].numpy().transpose(1, 0, 2, 3)[:, lo:hi]
        return centre(svd(t.reshape(t.shape[0], -1))[1], hi - lo)

    U = svd(w["conv3.weight"].numpy().reshape(c3, -1))[0]
    ref = diag(U, tconv_cols("tconv3.weight", c3, 2 * c3))
    got = st.alignment("conv3.weight -> tconv3.weight[:, 8:16]")[-1]
    np.testing.assert_allclose(got[: len(ref)], ref, atol=1e-4)
    t4 = w["tconv4.weight"].numpy().transpose(1, 0, 2, 3)
    U = svd(t4.reshape(t4.shape[0], -1))[0]
    ref = diag(U, tconv_cols("tconv3.weight", 0, c3))
    got = st.alignment("tconv4.weight -> tconv3.weight[:, 0:8]")[-1]
    np.testing.assert_allclose(got[: len(ref)], ref, atol=1e-4)
    U = svd(w["dense1.weight"].numpy())[0]
    ref = diag(U, tconv_cols("tconv1.weight", c1, 2 * c1))
    got = st.alignment("dense1.weight -> tconv1.weight[:, 4:8]")[-1]
    np.testing.assert_allclose(got[: len(ref)], ref, atol=1e-4)


def test_pairs_file_takes_the_sliced_pairs(tmp_path):
    """Every automatic LSTM pair (gates, direction halves) written to a --pairs file gives the same store."""
    st, _ = series(tmp_path, small("lstm", steps=2))
    f = tmp_path / "pairs.txt"
    f.write_text("\n".join(st.pairs) + "\n")
    out = tmp_path / "again.zarr"
    analyze([tmp_path / "run"], out=out, options=AnalyzeOptions(pairs_file=str(f)), show_progress=False)
    again = open_store(out)
    assert again.pair_docs() == st.pair_docs() and len(st.pairs) == 10  # 2 layers: 6 + 4
    np.testing.assert_array_equal(again.alignment(), st.alignment())
