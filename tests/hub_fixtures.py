"""A tiny GPT-NeoX trained by the real HF Trainer, and a Hugging Face hub cache made from its checkpoints in
huggingface_hub's own layout (what `snapshot_download(repo, revision="step8")` leaves on disk):

    models--org--name/blobs/<sha256 for LFS files, git blob sha1 for the rest>
    models--org--name/snapshots/<commit>/<file> -> ../../blobs/<hash>   (relative symlinks)
    models--org--name/refs/<revision>            (the commit hash, no newline)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

# What a checkpoint pushed to the hub holds (optimizer and rng files stay local); fetch downloads these too.
PUSHED = ("config.json", "generation_config.json", "model.safetensors", "trainer_state.json", "tokenizer.json",
          "tokenizer_config.json", "special_tokens_map.json", "model.safetensors.index.json")  # fmt: skip
LFS_SUFFIXES = (".safetensors", ".bin")
VOCAB = 48
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def char_tokenizer():
    """A character-level fast tokenizer, built offline with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(TEXT))
    vocab = {"[UNK]": 0, "[PAD]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def tiny_neox(**overrides):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    cfg.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPTNeoXForCausalLM(GPTNeoXConfig(**cfg))


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, n: int, seq: int = 32):
        self.ids, self.n, self.seq = ids, n, seq

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        start = (i * 7) % (len(self.ids) - self.seq)
        x = self.ids[start : start + self.seq]
        return {"input_ids": x, "labels": x.clone()}


def train_with_trainer(out: Path, model=None, steps: int = 40, save_steps: int = 8) -> Path:
    """A few real Trainer steps on character text: checkpoint-8 ... checkpoint-40 with trainer_state.json (loss,
    eval_loss, learning_rate in log_history) and the tokenizer."""
    from transformers import Trainer, TrainingArguments

    tok = char_tokenizer()
    ids = torch.tensor(tok(TEXT)["input_ids"])
    model = model or tiny_neox()
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, save_steps=save_steps, logging_steps=4, eval_strategy="steps",
        eval_steps=save_steps, per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=3e-3,
        report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, save_only_model=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(ids, 160), eval_dataset=_Blocks(ids, 8),
                      processing_class=tok)  # fmt: skip
    trainer.train()
    return out


def _etag(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:  # LFS files are stored under their sha256
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob hash, the hub's etag


def add_revision(cache: Path, repo: str, revision: str, folder: Path, files=PUSHED) -> str:
    """Put `folder`'s files into the hub cache as revision `revision` of `repo`, as snapshot_download does;
    returns the (made-up, deterministic) commit hash."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    names = [n for n in files if (folder / n).is_file()]
    commit = hashlib.sha1(f"{repo}@{revision}:".encode() + b"".join(_etag(folder / n).encode() for n in names))
    commit = commit.hexdigest()
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for n in names:
        blob = repo_dir / "blobs" / _etag(folder / n)
        if not blob.exists():
            shutil.copyfile(folder / n, blob)
        link = snap / n
        if not link.is_symlink():
            os.symlink(os.path.relpath(blob, link.parent), link)
    (repo_dir / "refs").mkdir(exist_ok=True)
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return commit


def hub_cache_from_trainer(cache: Path, repo: str, output_dir: Path) -> dict[str, str]:
    """Every checkpoint-N of a Trainer run as revision stepN of `repo`; {revision: commit}."""
    out = {}
    for ck in sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        rev = "step" + ck.name.split("-")[1]
        out[rev] = add_revision(cache, repo, rev, ck)
    return out
