"""Built-in evaluation tasks for Hugging Face models: `hf-causal-lm`, `hf-masked-lm` (and
`hf-image-classification`, on a `.npz` of `pixel_values` and `labels`, see its class).

No code to write: the model is built from the run's own config.json (`AutoModelForCausalLM.from_config`), each
checkpoint's tensors are matched to it with transformers' key handling (specdyn.tasks.hf_keys), and the data is
`--data FILE`: text, tokenized with the run's tokenizer when the checkpoint folder holds one, or token ids in a
`.npy`/`.pt` file. The ids are cut into blocks of `seq_len` tokens; the first `1 - val_frac` of the blocks are
the "train" split and the rest "val" (both from FILE: they are two parts of the user's data, not the model's
training set). Loss is the mean cross-entropy per predicted token; `err` the fraction of predicted tokens whose
most likely token is wrong (next token for causal LMs, the masked tokens for masked LMs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from specdyn.errors import EXIT_USAGE, SpecdynError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json", ".csv", "")


@dataclasses.dataclass
class HFLMConfig:
    """`--config` keys of the hf-* tasks (`model_dir` is set by specdyn to the first checkpoint's folder)."""

    data: str = ""  # --data FILE
    model_dir: str = ""
    seq_len: int = 128
    batch_size: int = 8
    val_frac: float = 0.5
    max_blocks: int = 0  # 0 = every block of FILE
    mask_prob: float = 0.15  # hf-masked-lm: fraction of tokens masked (a fixed, seeded choice)
    mask_token_id: int = -1  # hf-masked-lm without a tokenizer
    seed: int = 0
    device: str = "cpu"


class HFLanguageModelTask:
    """Loss and token error of a transformers language model on a token file; see the module docstring."""

    name = "hf-causal-lm"
    Config = HFLMConfig
    auto_class = "AutoModelForCausalLM"
    has_error = True

    def __init__(self, config: HFLMConfig | None = None):
        self.config = config or HFLMConfig()
        if not self.config.data:
            raise SpecdynError(
                f"--task {self.name} needs --data FILE (text, or token ids as .npy/.pt)", code=EXIT_USAGE
            )
        if not 0 < self.config.val_frac < 1:
            raise SpecdynError(f"--set val_frac={self.config.val_frac}: must be between 0 and 1", code=EXIT_USAGE)
        self._blocks: dict[str, torch.Tensor] | None = None
        self._hf_config = None

    # ----- model
    def hf_config(self):
        if self._hf_config is None:
            from transformers import AutoConfig

            folder = Path(self.config.model_dir)
            if not (folder / "config.json").is_file():
                raise SpecdynError(
                    f"{folder}: no config.json, which --task {self.name} builds the model from; use a Hugging Face "
                    "checkpoint folder (save_pretrained, Trainer checkpoint-N/, a hub snapshot)"
                )
            try:
                self._hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            except Exception as e:  # an unknown model_type, a damaged file: one line
                raise SpecdynError(
                    f"{folder / 'config.json'}: transformers cannot build a model from it ({e})"
                ) from None
        return self._hf_config

    def build_model(self) -> nn.Module:
        import transformers

        cls = getattr(transformers, self.auto_class)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            try:
                model = cls.from_config(self.hf_config()).float()
            except ValueError as e:  # e.g. a config with no causal-LM head class
                raise SpecdynError(f"{self.config.model_dir}: --task {self.name}: {e}") from None
        return model.to(self.config.device).eval()

    # ----- data
    def token_ids(self) -> torch.Tensor:
        """Every token id of --data, as int64."""
        path = Path(self.config.data)
        if not path.is_file():
            raise SpecdynError(f"--data {path}: no such file")
        if path.suffix == ".npy":
            try:
                ids = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64).reshape(-1))
            except ValueError as e:
                raise SpecdynError(f"--data {path}: not a numpy array of token ids ({e})") from None
        elif path.suffix in (".pt", ".pth"):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise SpecdynError(f"--data {path}: not a tensor of token ids ({type(e).__name__}: {e})") from None
            if not isinstance(loaded, torch.Tensor):
                raise SpecdynError(f"--data {path}: holds a {type(loaded).__name__}, not a tensor of token ids")
            ids = loaded.reshape(-1).long()
        else:
            ids = torch.tensor(self.tokenizer()(path.read_text(), add_special_tokens=False)["input_ids"])
        vocab = self.hf_config().vocab_size
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
            raise SpecdynError(
                f"--data {path}: token ids span {int(ids.min())}..{int(ids.max())}; the vocabulary has {vocab}"
            )
        return ids

    def tokenizer(self):
        folder = Path(self.config.model_dir)
        if not any((folder / n).is_file() for n in TOKENIZER_FILES):
            raise SpecdynError(
                f"--data {self.config.data} is text but {folder} holds no tokenizer; pass token ids as .npy or .pt"
            )
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:
            raise SpecdynError(f"{folder}: the tokenizer does not load ({type(e).__name__}: {e})") from None

    def blocks(self) -> dict[str, torch.Tensor]:
        if self._blocks is None:
            c, ids = self.config, self.token_ids()
            n = len(ids) // c.seq_len
            if c.max_blocks:
                n = min(n, c.max_blocks)
            n_val = int(round(n * c.val_frac))
            if n < 2 or n_val < 1 or n_val >= n:
                raise SpecdynError(
                    f"--data {c.data}: {len(ids)} tokens make {n} blocks of seq_len={c.seq_len}; at least one "
                    "block per split is needed (more data, or --config seq_len=N)"
                )
            b = ids[: n * c.seq_len].view(n, c.seq_len)
            self._blocks = {"train": b[: n - n_val], "val": b[n - n_val :]}
        return self._blocks

    def batches(self, split: str) -> list[tuple[torch.Tensor, ...]]:
        b, size = self.blocks()[split], self.config.batch_size
        return [(b[i : i + size],) for i in range(0, len(b), size)]

    # ----- evaluation
    def batch_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Summed token loss, summed token errors and the number of predicted tokens of one batch."""
        ids = batch[0].to(self.config.device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        target = ids[:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
        err = (logits.argmax(-1) != target).sum()
        return loss, err, target.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        total, loss_sum, err_sum = 0, 0.0, 0.0
        try:
            for batch in self.batches(split):
                loss, err, n = self.batch_loss(model, batch)
                loss_sum, err_sum, total = loss_sum + float(loss), err_sum + float(err), total + n
        finally:
            model.train(was_training)
        return {"loss": loss_sum / total, "err": err_sum / total}


class HFMaskedLMTask(HFLanguageModelTask):
    """Masked LMs (BERT, RoBERTa, ...): a fixed seeded `mask_prob` of the tokens replaced by the mask token."""

    name = "hf-masked-lm"
    auto_class = "AutoModelForMaskedLM"

    def mask_id(self) -> int:
        if self.config.mask_token_id >= 0:
            return self.config.mask_token_id
        tok = self.tokenizer() if any((Path(self.config.model_dir) / n).is_file() for n in TOKENIZER_FILES) else None
        if tok is None or tok.mask_token_id is None:
            raise SpecdynError(
                f"--task {self.name}: no tokenizer with a mask token in {self.config.model_dir}; pass "
                "--config mask_token_id=N"
            )
        return int(tok.mask_token_id)

    def blocks(self) -> dict[str, torch.Tensor]:
        if self._blocks is None:
            blocks = super().blocks()
            g = torch.Generator().manual_seed(self.config.seed)
            mask_id = self.mask_id()
            out = {}
            for split, b in blocks.items():
                chosen = torch.rand(b.shape, generator=g) < self.config.mask_prob
                chosen[:, 0] |= ~chosen.any(1)  # every block predicts at least one token
                out[split] = torch.stack([b, torch.where(chosen, mask_id, b), chosen.long()], 1)
            self._blocks = out
        return self._blocks

    def batch_loss(self, model: nn.Module, batch):
        b = batch[0].to(self.config.device)
        target, inputs, chosen = b[:, 0], b[:, 1], b[:, 2].bool()
        logits = model(input_ids=inputs).logits.float()[chosen]
        target = target[chosen]
        loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        return loss, (logits.argmax(-1) != target).sum(), target.numel()


class HFImageClassificationTask(HFLanguageModelTask):
    """Image classifiers (ViT, ConvNeXt, ResNet, ...): `--data FILE.npz` with `pixel_values` (N, C, H, W) as the
    model's processor would make them and integer `labels` (N,); loss and error per image."""

    name = "hf-image-classification"
    auto_class = "AutoModelForImageClassification"

    def blocks(self) -> dict[str, torch.Tensor]:
        if self._blocks is None:
            path = Path(self.config.data)
            if path.suffix != ".npz" or not path.is_file():
                raise SpecdynError(f"--data {path}: {self.name} reads a .npz file with pixel_values and labels")
            try:
                with np.load(path, allow_pickle=False) as f:
                    x, y = torch.from_numpy(f["pixel_values"]).float(), torch.from_numpy(f["labels"]).long()
            except (KeyError, ValueError) as e:
                raise SpecdynError(f"--data {path}: needs arrays pixel_values and labels ({e})") from None
            n = min(len(x), self.config.max_blocks or len(x))
            n_val = int(round(n * self.config.val_frac))
            if len(y) != len(x) or n_val < 1 or n_val >= n:
                raise SpecdynError(f"--data {path}: {len(x)} images and {len(y)} labels; need matching counts, >= 2")
            self._blocks = {"train": (x[: n - n_val], y[: n - n_val]), "val": (x[n - n_val : n], y[n - n_val : n])}
        return self._blocks

    def batches(self, split: str):
        (x, y), size = self.blocks()[split], self.config.batch_size
        return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]

    def batch_loss(self, model: nn.Module, batch):
        x, y = (t.to(self.config.device) for t in batch)
        logits = model(pixel_values=x).logits.float()
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        return loss, (logits.argmax(-1) != y).sum(), len(y)


HF_TASKS = {
    "hf-causal-lm": HFLanguageModelTask,
    "hf-masked-lm": HFMaskedLMTask,
    "hf-image-classification": HFImageClassificationTask,
}


def hf_model_dir(checkpoint: Path) -> Path:
    """The folder whose config.json describes a checkpoint: the folder itself, or a weights file's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def make_hf_task(name: str, checkpoint: Path, overrides: dict):
    """An hf-* task for a series whose first checkpoint is `checkpoint`, and its JSON description (without
    `model_dir`, which follows the selection: results stay comparable across reruns)."""
    fields = {f.name: f for f in dataclasses.fields(HFLMConfig)}
    values = {}
    for key, value in overrides.items():
        if key not in fields or key == "model_dir":
            keys = ", ".join(k for k in fields if k != "model_dir")
            raise SpecdynError(f"task {name} has no config key {key!r}; keys: {keys}")
        kind = type(fields[key].default)
        try:
            values[key] = kind(value) if kind is not bool else str(value).lower() in ("1", "true", "yes")
        except ValueError:
            raise SpecdynError(f"bad value for {name} config key {key!r}: {value!r}") from None
    if values.get("data"):
        values["data"] = str(Path(values["data"]).expanduser().resolve())
    config = HFLMConfig(**values, model_dir=str(hf_model_dir(checkpoint)))
    task = HF_TASKS[name](config)
    described = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("model_dir", "device")}
    return task, described
