"""hf-causal-lm / hf-masked-lm: Hugging Face series evaluated without a task file. Every loss is checked against
transformers itself: `from_pretrained` on the checkpoint folder and the model's own `labels=` loss."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

from specdyn.cli import app  # noqa: E402
from specdyn.errors import SpecdynError  # noqa: E402
from specdyn.evals.taskload import match_state, resolve_task  # noqa: E402
from specdyn.tasks.hf_lm import HFLMConfig, HFMaskedLMTask  # noqa: E402
from tests.hub_fixtures import TEXT, char_tokenizer, tiny_neox  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SEQ = 16
V = 48


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                                      eos_token_id=0))  # fmt: skip


def llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied,
                                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0))  # fmt: skip


def bert():
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=64, pad_token_id=1))  # fmt: skip


FAMILIES = {"gpt2-tied": gpt2, "llama-tied": lambda: llama(True), "llama": lambda: llama(False), "neox": tiny_neox}


def series(run, make, steps=(1, 2), tokenizer=False):
    """checkpoint-N folders of one model, perturbed a little between saves."""
    torch.manual_seed(0)
    model = make()
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.save_pretrained(run / f"checkpoint-{step}")
        if tokenizer:
            char_tokenizer().save_pretrained(run / f"checkpoint-{step}")
    return run


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    ids = np.array(char_tokenizer()(TEXT)["input_ids"][: 12 * SEQ])
    path = tmp_path_factory.mktemp("data") / "ids.npy"
    np.save(path, ids)
    return path


def hf_reference(folder, ids: np.ndarray, split: str):
    """Loss and next-token error of transformers' own model loaded by from_pretrained, on one split's blocks."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    blocks = torch.from_numpy(ids).long().view(-1, SEQ)
    n_val = int(round(len(blocks) * 0.5))
    blocks = blocks[: len(blocks) - n_val] if split == "train" else blocks[len(blocks) - n_val :]
    with torch.no_grad():
        out = model(input_ids=blocks, labels=blocks)
    err = (out.logits[:, :-1].argmax(-1) != blocks[:, 1:]).double().mean().item()
    return out.loss.item(), err


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_eval_matches_transformers_on_every_family(family, tmp_path, ids_file):
    run = series(tmp_path / family, FAMILIES[family])
    assert runner.invoke(app, ["analyze", str(run), "-q"]).exit_code == 0
    args = ["prune-eval", str(run), "--task", "hf-causal-lm", "--data", str(ids_file), "--set", f"seq_len={SEQ}"]
    result = runner.invoke(app, [*args, "--keep", "0.5,1", "--json", "-q"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["steps"] == [1, 2]
    for i, step in enumerate(s["steps"]):
        for split in ("train", "val"):
            loss, err = hf_reference(run / f"checkpoint-{step}", np.load(ids_file), split)
            assert s["full"][split]["loss"][i] == pytest.approx(loss, rel=1e-5)
            assert s["full"][split]["err"][i] == pytest.approx(err, abs=1e-9)
            # keeping every direction is the full model: pruning edits the tied/renamed tensors consistently
            assert s["top_kept"]["1.0"][split]["loss"][i] == pytest.approx(loss, rel=1e-4)
    assert s["top_kept"]["0.5"]["val"]["loss"][-1] != pytest.approx(s["full"]["val"]["loss"][-1], rel=1e-6)


def test_interpolate_on_an_hf_pair_starts_and_ends_at_the_endpoints(tmp_path, ids_file):
    run = series(tmp_path / "gpt2", gpt2)
    a, b = run / "checkpoint-1", run / "checkpoint-2"
    out = tmp_path / "interp.zarr"
    args = ["interpolate", str(a), str(b), "--task", "hf-causal-lm", "--data", str(ids_file), "--set",
            f"seq_len={SEQ}", "--points", "3", "--out", str(out), "--json", "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    curve = json.loads(result.stdout)["results"][0]["full"]["val"]["loss"]
    assert curve[0] == pytest.approx(hf_reference(a, np.load(ids_file), "val")[0], rel=1e-5)
    assert curve[-1] == pytest.approx(hf_reference(b, np.load(ids_file), "val")[0], rel=1e-5)


def test_text_data_is_tokenized_with_the_runs_tokenizer(tmp_path):
    run = series(tmp_path / "neox", tiny_neox, steps=(1,), tokenizer=True)
    text = tmp_path / "text.txt"
    text.write_text(TEXT[: 12 * SEQ])
    task, described = resolve_task("hf-causal-lm", run / "checkpoint-1", {"data": str(text), "seq_len": str(SEQ)})
    assert "model_dir" not in described["config"] and described["config"]["seq_len"] == SEQ
    ids = np.array(char_tokenizer()(TEXT[: 12 * SEQ], add_special_tokens=False)["input_ids"])
    assert torch.equal(task.token_ids(), torch.from_numpy(ids))


def test_masked_lm_matches_transformers(tmp_path, ids_file):
    from specdyn.evals.taskload import Endpoint, load_state_, read_state

    run = series(tmp_path / "bert", bert, steps=(1,))
    folder = run / "checkpoint-1"
    task, _ = resolve_task("hf-masked-lm", folder, {"data": str(ids_file), "seq_len": str(SEQ), "mask_token_id": "2"})
    assert isinstance(task, HFMaskedLMTask)
    model = task.build_model()
    end = Endpoint.open(folder)
    load_state_(model, read_state(end.reader, match_state(model, end.shapes, folder), model))
    got = task.evaluate(model, "val")
    ref = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    b = task.blocks()["val"]
    target, inputs, chosen = b[:, 0], b[:, 1], b[:, 2].bool()
    assert chosen.any() and (inputs[chosen] == 2).all() and (inputs[~chosen] == target[~chosen]).all()
    with torch.no_grad():
        out = ref(input_ids=inputs, labels=torch.where(chosen, target, -100))
    assert got["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert got["err"] == pytest.approx((out.logits[chosen].argmax(-1) != target[chosen]).double().mean().item())


def test_a_checkpoint_that_does_not_fit_its_config_is_one_line_naming_the_tensor(tmp_path, ids_file):
    run = series(tmp_path / "gpt2", gpt2, steps=(1,))
    folder = run / "checkpoint-1"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_inner"] = 40  # the MLP width the weights were not saved with
    (folder / "config.json").write_text(json.dumps(cfg))
    assert runner.invoke(app, ["analyze", str(run), "-q"]).exit_code == 0
    result = runner.invoke(app, ["prune-eval", str(run), "--task", "hf-causal-lm", "--data", str(ids_file), "-q"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "'transformer.h.0.mlp.c_fc.weight' is 16x40 in the model" in " ".join(result.output.split())


def test_data_errors_are_one_line(tmp_path, ids_file):
    run = series(tmp_path / "gpt2", gpt2, steps=(1,))
    folder = run / "checkpoint-1"
    with pytest.raises(SpecdynError, match="needs --data FILE"):
        resolve_task("hf-causal-lm", folder, {})
    text = tmp_path / "t.txt"
    text.write_text("hello")
    task, _ = resolve_task("hf-causal-lm", folder, {"data": str(text)})
    with pytest.raises(SpecdynError, match="is text but .* holds no tokenizer; pass token ids"):
        task.batches("val")
    np.save(tmp_path / "big.npy", np.array([0, 1, V + 5] * 100))
    task, _ = resolve_task("hf-causal-lm", folder, {"data": str(tmp_path / "big.npy")})
    with pytest.raises(SpecdynError, match="the vocabulary has 48"):
        task.batches("val")
    with pytest.raises(
        SpecdynError, match="--data is the data of the hf-causal-lm, hf-masked-lm, hf-image-classification tasks"
    ):
        resolve_task("mlp", folder, {"data": str(ids_file)})
    with pytest.raises(SpecdynError, match="has no config key 'lr'"):
        resolve_task("hf-causal-lm", folder, {"data": str(ids_file), "lr": "1"})
    assert HFLMConfig().val_frac == 0.5


def test_image_classification_matches_transformers(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, num_labels=3)  # fmt: skip
    run = series(tmp_path / "vit", lambda: ViTForImageClassification(cfg))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 3, (12,), generator=g)
    data = tmp_path / "images.npz"
    np.savez(data, pixel_values=x.numpy(), labels=y.numpy())
    assert runner.invoke(app, ["analyze", str(run), "-q"]).exit_code == 0
    args = ["prune-eval", str(run), "--task", "hf-image-classification", "--data", str(data), "--json", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    for i, step in enumerate(s["steps"]):
        ref = transformers.AutoModelForImageClassification.from_pretrained(run / f"checkpoint-{step}").eval()
        with torch.no_grad():
            out = ref(pixel_values=x[6:], labels=y[6:])
        assert s["full"]["val"]["loss"][i] == pytest.approx(out.loss.item(), rel=1e-5)
        assert s["full"]["val"]["err"][i] == pytest.approx((out.logits.argmax(-1) != y[6:]).double().mean().item())


def test_a_users_own_task_with_a_tied_hf_model_loads_through_transformers_key_handling(tmp_path):
    # the case a hand-written task file failed on: the file has no lm_head.weight (tied to the embedding)
    from specdyn.evals.taskload import Endpoint

    run = series(tmp_path / "gpt2", gpt2, steps=(1,))
    end = Endpoint.open(run / "checkpoint-1")
    assert "lm_head.weight" not in end.shapes
    state_map = match_state(gpt2(), end.shapes, end.path)
    assert state_map.names["lm_head.weight"] == "transformer.wte.weight"
    assert state_map.names["transformer.h.1.mlp.c_proj.weight"] == "transformer.h.1.mlp.c_proj.weight"
