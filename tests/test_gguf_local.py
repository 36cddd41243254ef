"""`hf:<file>.gguf`: a GGUF file converted once to a cached safetensors folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import neuroscribe.embedded as embedded
from neuroscribe.errors import ConfigError
from neuroscribe.llm.local import ModelStore, load_local_model, resolve_local_spec


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh NEUROSCRIBE_CACHE, so no test reads or writes the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("NEUROSCRIBE_CACHE", str(root))
    return root


def test_missing_gguf_file_is_a_config_error_naming_it(cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ConfigError, match="does not exist") as info:
        resolve_local_spec(f"hf:{missing}")
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError, match=r"model\.gguf"):
        load_local_model(f"hf:{missing}", device="cpu", store=ModelStore())


def test_non_gguf_file_with_gguf_suffix_is_a_config_error(cache: Path, tmp_path: Path) -> None:
    fake = tmp_path / "not-really.gguf"
    fake.write_text('{"this": "is json"}')
    with pytest.raises(ConfigError, match="not a GGUF file") as info:
        resolve_local_spec(f"hf:{fake}")
    assert str(fake) in str(info.value)
    assert not (cache / "models").exists()  # refused before any conversion


def test_unconvertible_gguf_is_a_config_error_naming_it(cache: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 60)  # the magic, then no valid header
    with pytest.raises(ConfigError, match="cannot convert GGUF file") as info:
        resolve_local_spec(f"hf:{broken}")
    assert str(broken) in str(info.value)


def test_conversion_is_cached_and_redone_when_the_file_changes(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def fake_convert(gguf_file, target: Path, *, source=None) -> Path:
        calls.append(Path(gguf_file))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"")
        (target / embedded.GGUF_SOURCE).write_text(json.dumps(source))
        return target

    monkeypatch.setattr(embedded, "convert_gguf", fake_convert)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\x01" * 100)
    first = resolve_local_spec(f"hf:{model}")
    assert resolve_local_spec(f"hf:{model}") == first
    assert len(calls) == 1
    assert Path(first).is_relative_to(cache)
    assert json.loads((Path(first) / embedded.GGUF_SOURCE).read_text())["size"] == 104

    model.write_bytes(b"GGUF" + b"\x02" * 100)  # same size, new content and mtime
    os.utime(model, ns=(1, 1))
    second = resolve_local_spec(f"hf:{model}")
    assert second != first and len(calls) == 2


@pytest.mark.slow
def test_embedded_gguf_file_matches_hf_embedded(cache: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    gguf = embedded.gguf_path()
    store = ModelStore()
    from_file = load_local_model(f"hf:{gguf}", device="cpu", dtype="float32", store=store)
    reference = load_local_model("hf:embedded", device="cpu", dtype="float32", store=store)
    assert from_file.path != reference.path
    assert Path(from_file.path).parent == cache / "models" / "gguf"

    text = "The neuron fires on dates such as 12 March 1999.\tA value: 10"
    gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = gguf_tok(text)["input_ids"]
    assert from_file.tokenizer(text)["input_ids"] == ids
    assert reference.tokenizer(text)["input_ids"] == ids
    assert from_file.tokenizer.chat_template == gguf_tok.chat_template
    assert from_file.tokenizer.chat_template  # SmolLM2's GGUF carries one

    with torch.inference_mode():
        a = from_file.model(input_ids=torch.tensor([ids])).logits
        b = reference.model(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

    # A second load reuses the converted folder.
    assert resolve_local_spec(f"hf:{gguf}") == from_file.path
