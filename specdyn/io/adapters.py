"""PEFT LoRA adapter series: `checkpoint-N/` folders holding `adapter_model.safetensors` (or `.bin`) and
`adapter_config.json`, read as the effective weights W = W_base + ΔW of the base model they adapt.

ΔW is what `peft` 0.21 merges (`merge_and_unload`): scale · B A with scale = lora_alpha / r (rsLoRA:
lora_alpha / sqrt(r)), r and alpha per module from `rank_pattern`/`alpha_pattern`, transposed for
`fan_in_fan_out` (GPT-2's Conv1D) and for embeddings; DoRA rescales each output row of W_base + scale · B A to
the stored magnitude; `modules_to_save` tensors replace the base's. Tensors the adapter does not touch are the
base's. Names, order and shapes are the base's, so the architecture layer describes the base model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdyn.errors import CheckpointError, SpecdynError
from specdyn.io.base import Checkpoint, CheckpointFormat, TensorSource, reading
from specdyn.io.hf import trainer_metadata, trainer_step

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."  # where peft's PeftModel keeps the base model's modules
# LoRA options that change ΔW in ways not read here: refused rather than analyzed wrongly.
UNSUPPORTED = (
    "layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "arrow_config",
    "use_bdlora", "use_qalora", "kasa_config", "velora_config", "monteclora_config",
)  # fmt: skip
_LORA = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                   r"(?:\.weight)?$")  # fmt: skip


def weights_of(folder: Path) -> Path | None:
    return next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)


def is_adapter(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and weights_of(folder) is not None


def pattern_key(patterns, module: str) -> str | None:
    """The `rank_pattern`/`alpha_pattern` key that applies to a module, as peft's `get_pattern_key` matches it."""
    return next((key for key in patterns if re.match(rf"(.*\.)?({key})$", module)), None)


@dataclass(frozen=True)
class LoraConfig:
    """What of an adapter_config.json decides ΔW."""

    path: Path
    r: int
    alpha: float
    rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    fan_in_fan_out: bool = False
    dora: bool = False
    modules_to_save: tuple[str, ...] = ()
    base: str | None = None  # base_model_name_or_path
    revision: str | None = None

    def rank(self, module: str) -> int:
        key = pattern_key(self.rank_pattern, module)
        return int(self.rank_pattern[key]) if key is not None else self.r

    def scaling(self, module: str) -> float:
        """peft's `scaling[adapter]`: alpha / r, or alpha / sqrt(r) under rsLoRA, with this module's r and alpha."""
        key = pattern_key(self.alpha_pattern, module)
        alpha = float(self.alpha_pattern[key]) if key is not None else self.alpha
        r = self.rank(module)
        return alpha / math.sqrt(r) if self.rslora else alpha / r


def read_config(folder: Path) -> LoraConfig:
    """The adapter's LoRA config; a one-line error for a damaged file, another PEFT type or an unsupported option."""
    path = folder / CONFIG
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the adapter's config is damaged") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: not a PEFT adapter config (a JSON object with peft_type)")
    kind = doc.get("peft_type")
    if kind != "LORA":  # not damage: a whole series specdyn cannot read, refused rather than skipped
        raise SpecdynError(
            f"{path}: PEFT type {kind!r} is not supported; specdyn reads LoRA adapters (LoRA, rsLoRA, DoRA)"
        )
    for key in UNSUPPORTED:
        if doc.get(key):
            raise SpecdynError(f"{path}: LoRA option {key}={doc[key]!r} is not supported by specdyn")
    try:
        return LoraConfig(
            path,
            r=_positive_int(doc.get("r", 8), "r"),
            alpha=float(doc.get("lora_alpha", 8)),
            rslora=bool(doc.get("use_rslora", False)),
            rank_pattern={str(k): _positive_int(v, "rank_pattern") for k, v in (doc.get("rank_pattern") or {}).items()},
            alpha_pattern={str(k): float(v) for k, v in (doc.get("alpha_pattern") or {}).items()},
            fan_in_fan_out=bool(doc.get("fan_in_fan_out", False)),
            dora=bool(doc.get("use_dora", False)),
            modules_to_save=tuple(doc.get("modules_to_save") or ()),
            base=doc.get("base_model_name_or_path") or None,
            revision=doc.get("revision") or None,
        )
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: a LoRA setting is malformed ({e})") from None


def _positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} {v!r} is not a positive integer")
    return v


class AdapterSource:
    """The effective weights of an adapter on its base (a TensorSource of the base's names and shapes)."""

    def __init__(self, folder: Path, base: TensorSource, base_meta: dict, trust_pickle: bool):
        self.folder, self.base, self.base_meta = folder, base, base_meta
        self.config = read_config(folder)
        self.ordered = base.ordered
        weights = weights_of(folder)
        with reading(weights, "adapter"):
            self.adapter = _open_weights(weights, trust_pickle)
        self.lora: dict[str, tuple[str, dict]] = {}  # base key -> (module path, {part: adapter key})
        self.replaced: dict[str, str] = {}  # base key -> adapter key (modules_to_save)
        try:
            self._index()
        except BaseException:
            self.adapter.close()
            raise

    # -- TensorSource: the base's keys, shapes and dtypes; effective tensors
    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str):
        return self.base.dtype(key)

    def dtype_name(self, key: str) -> str:
        if hasattr(self.base, "dtype_name"):
            return self.base.dtype_name(key)
        return str(self.base.dtype(key)).removeprefix("torch.")

    def param_order(self) -> list[str]:
        return self.base.param_order()

    def metadata(self) -> dict:
        """The base's metadata (its config.json describes the model) with the adapter folder's trainer_state."""
        return {**self.base_meta, **trainer_metadata(self.folder)}

    def close(self) -> None:
        self.adapter.close()
        self.base.close()

    def unchanged(self, key: str) -> bool:
        """Whether this tensor is the base's as it is (the adapter neither adapts nor replaces it)."""
        return key not in self.lora and key not in self.replaced

    def array(self, key: str) -> np.ndarray:
        """The effective tensor as float32 numpy, merged as peft merges it."""
        if key in self.replaced:  # modules_to_save, or an embedding's base weight saved with its adapter
            base = _as_array(self.adapter, self.replaced[key])
        else:
            base = _as_array(self.base, key)
        if key not in self.lora:
            return base
        module, parts = self.lora[key]
        merged = base + self._delta(key, module, parts)
        if "lora_magnitude_vector" in parts:  # DoRA: each output row of W0 + ΔW rescaled to the magnitude
            out_axis = 1 if self._transposed(key, parts) else 0
            norm = np.linalg.norm(merged, axis=1 - out_axis)
            magnitude = _as_array(self.adapter, parts["lora_magnitude_vector"]).reshape(-1)
            factor = (magnitude / norm).astype(np.float32)
            merged = merged * (factor[None, :] if out_axis else factor[:, None])
        return merged.astype(np.float32, copy=False)

    def tensor(self, key: str):
        import torch

        return torch.from_numpy(self.array(key))

    def delta(self, key: str):
        """ΔW = W − W_base in stored orientation: None (unchanged), ("lowrank", L, R) with ΔW = L @ R, or
        ("dense", ΔW) (DoRA, modules_to_save)."""
        if self.unchanged(key):
            return None
        if key in self.lora and key not in self.replaced and "lora_magnitude_vector" not in self.lora[key][1]:
            module, parts = self.lora[key]
            return ("lowrank", *self._factors(key, module, parts))
        return ("dense", self.array(key) - _as_array(self.base, key))

    # -- internals
    def _index(self) -> None:
        base_keys = set(self.base.keys())
        modules: dict[str, dict[str, str]] = {}  # module path -> {lora_A/lora_B/...: adapter key}
        for key in self.adapter.keys():
            name = key.removeprefix(PREFIX)
            m = _LORA.match(name)
            if m:
                modules.setdefault(m["module"], {})[m["part"]] = key
            elif name.endswith(".lora_B.bias"):
                continue  # lora_bias: a bias vector, not a matrix
            else:  # modules_to_save (the full tensor), or peft's copy of an adapted embedding's base weight
                self.replaced[self._base_key(name.replace(".base_layer.", "."), base_keys)] = key
        for module, parts in modules.items():
            a, b = _pair(parts)
            if a is None or b is None:
                raise CheckpointError(f"{self.folder}: adapter module {module!r} lacks its lora_A or lora_B weight")
            key = self._base_key(module + ".weight", base_keys)
            self.lora[key] = (module, parts)
            self._check(key, module, parts)

    def _base_key(self, name: str, base_keys: set[str]) -> str:
        if name in base_keys:
            return name
        found = [k for k in base_keys if k.endswith("." + name) or name.endswith("." + k)]
        if len(found) == 1:
            return found[0]
        raise SpecdynError(  # the wrong base for the whole series, not a damaged checkpoint
            f"{self.folder}: the adapter changes {name!r}, which the base model does not hold; pass the base model "
            "this adapter was trained on (--base)"
        )

    def _transposed(self, key: str, parts: dict) -> bool:
        """Whether the base stores this weight input-major (Conv1D, fan_in_fan_out), decided by the shapes where
        they tell (peft flips the config's flag per layer type) and by the config for square matrices."""
        if "lora_embedding_A" in parts:
            return True
        b, a = self.adapter.shape(parts["lora_B"]), self.adapter.shape(parts["lora_A"])
        out_in, shape = (b[0], a[1]), tuple(self.base.shape(key))
        if out_in[0] != out_in[1] and shape in (out_in, out_in[::-1]):
            return shape != out_in
        return self.config.fan_in_fan_out

    def _check(self, key: str, module: str, parts: dict) -> None:
        a_key, b_key = _pair(parts)
        a, b = self.adapter.shape(a_key), self.adapter.shape(b_key)
        shape = tuple(self.base.shape(key))
        embedding = "lora_embedding_A" in parts
        if len(a) != 2 or len(b) != 2 or len(shape) != 2:
            raise CheckpointError(f"{self.folder}: LoRA on {module!r} (not a 2-d weight) is not supported by specdyn")
        r = self.config.rank(module)
        if a[0] != r or b[1] != r:
            raise CheckpointError(
                f"{self.folder}: {module!r} has LoRA rank {a[0]} in its weights but r={r} in {CONFIG}; the adapter "
                "is damaged"
            )
        if embedding and "lora_magnitude_vector" in parts:
            raise CheckpointError(f"{self.folder}: DoRA on the embedding {module!r} is not supported by specdyn")
        out_in = (b[0], a[1])
        want = out_in[::-1] if self._transposed(key, parts) else out_in
        if shape != want:
            raise SpecdynError(
                f"{self.folder}: the adapter of {module!r} is for a {list(want)} weight, but the base model's "
                f"{key!r} is {list(shape)}; pass the base model this adapter was trained on (--base)"
            )

    def _delta(self, key: str, module: str, parts: dict) -> np.ndarray:
        """scale · B A in stored orientation, in float32 as peft computes it (`transpose(B @ A) * scaling`)."""
        a_key, b_key = _pair(parts)
        A, B = _as_array(self.adapter, a_key), _as_array(self.adapter, b_key)
        delta = (B @ A) * np.float32(self.config.scaling(module))
        return delta.T if self._transposed(key, parts) else delta

    def _factors(self, key: str, module: str, parts: dict):
        """(L, R) in stored orientation with ΔW = L @ R (scale folded into L), as float32."""
        a_key, b_key = _pair(parts)
        A, B = _as_array(self.adapter, a_key), _as_array(self.adapter, b_key)
        scale = np.float32(self.config.scaling(module))
        if self._transposed(key, parts):
            return A.T * scale, B.T
        return B * scale, A


def _pair(parts: dict):
    a = parts.get("lora_A") or parts.get("lora_embedding_A")
    b = parts.get("lora_B") or parts.get("lora_embedding_B")
    return a, b


def _as_array(source, key: str) -> np.ndarray:
    out = source.array(key) if hasattr(source, "array") else None
    if out is None:
        out = source.tensor(key).detach().float().numpy()
    return np.asarray(out, dtype=np.float32)


def _open_weights(path: Path, trust_pickle: bool):
    from specdyn.io.safetensors_file import SafetensorsSource
    from specdyn.io.torch_file import TorchSource

    if path.suffix == ".safetensors":
        return SafetensorsSource.file(path)
    return TorchSource([path], trust_pickle)


class AdapterFormat(CheckpointFormat):
    name = "peft"
    describe = (
        "PEFT LoRA adapters (checkpoint-<step>/ with adapter_model.safetensors or .bin and adapter_config.json; "
        "read on their base model, --base)"
    )

    def claim_dir(self, path: Path, inside_series: bool) -> Path | None:
        return path if is_adapter(path) else None

    def recorded_step(self, path: Path, run_dir: Path) -> int | None:
        return trainer_step(path)

    def open(self, path: Path, trust_pickle: bool) -> TensorSource:
        raise CheckpointError(
            f"{path}: a PEFT adapter; its weights are read on its base model: pass --base PATH (specdyn analyze)"
        )

    def open_on(self, path: Path, base: Checkpoint, fmt: CheckpointFormat, trust_pickle: bool) -> AdapterSource:
        """The adapter's effective weights on `base`, a checkpoint of another format `fmt` (the caller looks it up
        in the registry, which imports this module)."""
        if fmt.name == self.name:
            raise SpecdynError(f"{base.path}: the base model is itself an adapter; pass the model it adapts")
        source = fmt.open(base.path, trust_pickle)
        try:
            return AdapterSource(path, source, fmt.metadata(base.path, source), trust_pickle)
        except BaseException:
            source.close()
            raise
