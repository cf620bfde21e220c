"""The architecture families specdyn knows, by Hugging Face `model_type`: adding a family is a module and a line.
A model_type not listed gets the generic default (module types from the model, pairs by shape rules)."""

from specdyn.arch import bert, bloom, codegen, gpt2, gpt_bigcode, gpt_neox, llama, moe, mpt, opt, phi, phi3, t5, vit
from specdyn.arch.base import Family

_ALL = (
    gpt2.FAMILY,
    gpt2.OPENAI,
    gpt2.IMAGEGPT,
    gpt_bigcode.FAMILY,
    codegen.FAMILY,
    gpt_neox.FAMILY,
    gpt_neox.JAPANESE,
    gpt_neox.PERSIMMON,
    mpt.MPT,
    mpt.MODERNBERT,
    phi3.PHI3,
    phi3.GLM,
    moe.MIXTRAL,
    moe.QWEN2_MOE,
    moe.DEEPSEEK,
    moe.GPT_OSS,
    moe.DBRX,
    llama.FAMILY,
    opt.FAMILY,
    bloom.BLOOM,
    bloom.FALCON,
    phi.PHI,
    phi.GPTJ,
    bert.FAMILY,
    t5.FAMILY,
    vit.FAMILY,
)
FAMILIES: dict[str, Family] = {t: f for f in _ALL for t in f.model_types}


def family_for(model_type: str | None) -> Family | None:
    return FAMILIES.get(model_type or "")
