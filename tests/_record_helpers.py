"""Helpers for the recording tests: tiny random-weight models and brute-force activations."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


@lru_cache(maxsize=1)
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from neuroscribe.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


def tiny_config(family: str, vocab_size: int = 1000):
    """A few-thousand-parameter config of each supported family."""
    import transformers as tr

    common = dict(vocab_size=vocab_size)
    if family == "gpt2":
        return tr.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **common)
    if family == "gpt_neox":
        return tr.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=128,
            **common,
        )
    if family == "gptj":
        return tr.GPTJConfig(
            n_embd=32, n_layer=3, n_head=4, n_positions=128, rotary_dim=4, **common
        )
    if family == "opt":
        return tr.OPTConfig(
            hidden_size=32,
            ffn_dim=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            **common,
        )
    cls = {
        "llama": tr.LlamaConfig,
        "mistral": tr.MistralConfig,
        "qwen2": tr.Qwen2Config,
        "qwen3": tr.Qwen3Config,
        "gemma": tr.GemmaConfig,
        "phi3": tr.Phi3Config,
    }[family]
    extra = {"head_dim": 8} if family in ("gemma", "qwen3", "mistral") else {}
    if family == "phi3":
        extra["pad_token_id"] = 0  # its default (32000) is outside the tiny vocabulary
    return cls(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **extra,
        **common,
    )


def tiny_model(family: str, vocab_size: int = 1000, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, vocab_size)
    for k, v in overrides.items():
        setattr(config, k, v)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def tiny_model_dir(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny random model with the embedded SmolLM2 tokenizer into `path`."""
    tok = embedded_tokenizer()
    model = tiny_model(family, vocab_size=len(tok), seed=seed, **overrides)
    # Wider activations than the default init so quantile bins are well separated.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def brute_force(
    model, module, windows: list[list[int]], hook: str = "input", transform=None
) -> list[np.ndarray]:
    """Activations [len(w), d] of `module` for each window, one unpadded forward per window."""
    out: list[np.ndarray] = []
    store: dict[str, torch.Tensor] = {}

    if hook == "input":
        handle = module.register_forward_pre_hook(lambda _m, args: store.__setitem__("x", args[0]))
    else:
        handle = module.register_forward_hook(
            lambda _m, _a, o: store.__setitem__("x", o[0] if isinstance(o, tuple) else o)
        )
    try:
        with torch.no_grad():
            for w in windows:
                model(input_ids=torch.tensor([w]), use_cache=False)
                x = store["x"][0].double().numpy()
                out.append(transform(x) if transform else x)
    finally:
        handle.remove()
    return out


# A small, fast recording of a tiny model over the built-in corpus (51 excerpts).
SMALL_RECORDING = dict(
    max_tokens=1200,
    excerpt_len=24,
    min_excerpt_len=4,
    batch_size=5,
    n_top=6,
    n_random=5,
    n_quantiles=3,
    per_quantile=3,
    pool_size=10_000,  # larger than the corpus: the pool holds every excerpt
    max_units=None,
    device="cpu",
)
