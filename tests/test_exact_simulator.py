"""Exact simulation on a local model: reference maths, cache/batching parity, limits."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from neuroscribe.embedded import embedded_model_dir
from neuroscribe.errors import ConfigError
from neuroscribe.llm.local import LocalLLM, LocalModel
from neuroscribe.prompts import PromptTooLong, build_simulation_prompt
from neuroscribe.simulator.exact import (
    ExactSimulator,
    build_simulation_ids,
    value_token_ids,
)

EXPLANATION = "words about cats and other animals"
EXCERPTS = [
    ["The", " cat", " sat", " on", " the", " mat", "."],
    [" Dogs", " bark"],
    ["A", " long", "er", " excerpt", " with", " 2024", " numbers", ",", " tabs\t", " and", "\n"],
    [],
    [" x"],
]


def tiny_llama(vocab_size: int, *, context: int = 2048, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama; a large init spread makes its digit distributions uneven."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def smol_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="module")
def tiny(smol_tokenizer) -> LocalModel:
    model = tiny_llama(len(smol_tokenizer))
    return LocalModel(path="tiny", model=model, tokenizer=smol_tokenizer, device="cpu")


def reference_distributions(model, tokenizer, explanation, tokens, scale_max, version):
    """By hand: tokenise the whole prompt text, one forward pass, softmax over digit ids."""
    prompt = build_simulation_prompt(explanation, tokens, scale_max=scale_max, version=version)
    ids = tokenizer(prompt.text(), add_special_tokens=True)["input_ids"]
    slot = tokenizer.convert_tokens_to_ids(prompt.slot)
    tab = tokenizer("\t", add_special_tokens=False)["input_ids"][0]
    digits = [tokenizer.convert_tokens_to_ids(str(v)) for v in range(scale_max + 1)]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    # A slot is the placeholder right after a row's tab ("?" also occurs in the text).
    slots = [i for i, t in enumerate(ids) if t == slot and ids[i - 1] == tab]
    out = []
    for i in slots:
        p = logprobs[i - 1, digits].exp()
        out.append((p / p.sum()).tolist())
    return out


def test_the_contrastive_prompt_matches_a_hand_built_reference(tiny):
    """simulate-v2: P(value > 0) under the explanation minus under the generic one, floored
    at 0, each read from a plain full-prompt forward pass."""
    from neuroscribe.prompts.simulate import CONTRAST_EXPLANATION

    sim = ExactSimulator("hf:tiny", loaded=tiny, prompt_version="simulate-v2")
    assert sim.prompt_version == "simulate-v2"
    results = sim.simulate_sync(EXPLANATION, EXCERPTS[:3])
    for tokens, result in zip(EXCERPTS[:3], results, strict=True):
        own = reference_distributions(
            tiny.model, tiny.tokenizer, EXPLANATION, tokens, 9, "simulate-v2"
        )
        base = reference_distributions(
            tiny.model, tiny.tokenizer, CONTRAST_EXPLANATION, tokens, 9, "simulate-v2"
        )
        want = [max(0.0, 9 * (1 - a[0]) - 9 * (1 - b[0])) for a, b in zip(own, base, strict=True)]
        assert result.expected == pytest.approx(want, abs=1e-4)
        flat = [p for dist in result.distributions for p in dist]
        assert flat == pytest.approx([p for dist in own for p in dist], abs=1e-4)


def reference_expected(model, tokenizer, explanation, tokens, scale_max):
    """By hand: tokenise the whole prompt text, one forward pass, softmax over digit ids."""
    prompt = build_simulation_prompt(explanation, tokens, scale_max=scale_max)
    ids = tokenizer(prompt.text(), add_special_tokens=True)["input_ids"]
    unknown = tokenizer.convert_tokens_to_ids("unknown")
    digits = [tokenizer.convert_tokens_to_ids(str(v)) for v in range(scale_max + 1)]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    slots = [i for i, t in enumerate(ids) if t == unknown]
    expected = []
    for i in slots:
        p = logprobs[i - 1, digits].exp()
        p = p / p.sum()
        expected.append(sum(v * float(p[v]) for v in range(scale_max + 1)))
    return ids, expected


def test_smollm2_has_no_single_token_ten_so_the_scale_is_0_to_9(smol_tokenizer):
    scale_max, ids = value_token_ids(smol_tokenizer)
    assert scale_max == 9
    assert smol_tokenizer.convert_ids_to_tokens(ids) == [str(v) for v in range(10)]
    assert len(smol_tokenizer("10", add_special_tokens=False)["input_ids"]) == 2
    with pytest.raises(ConfigError, match="scale_max 10"):
        value_token_ids(smol_tokenizer, 10)
    assert value_token_ids(smol_tokenizer, 4) == (4, ids[:5])


def test_expected_values_match_a_hand_built_reference(tiny):
    sim = ExactSimulator("hf:tiny", loaded=tiny, prompt_version="simulate-v1")
    results = sim.simulate_sync(EXPLANATION, EXCERPTS[:3])
    spread = []
    for tokens, result in zip(EXCERPTS[:3], results, strict=True):
        ids, expected = reference_expected(tiny.model, tiny.tokenizer, EXPLANATION, tokens, 9)
        # The piecewise ids are exactly the tokenisation of the whole prompt text here.
        built = build_simulation_ids(tiny.tokenizer, EXPLANATION, [tokens])
        assert built.prefix + built.excerpts[0].ids == ids
        assert len(expected) == len(tokens) == len(result.expected)
        assert result.scale_max == 9
        assert result.expected == pytest.approx(expected, abs=1e-4)
        for dist in result.distributions:
            assert len(dist) == 10
            assert sum(dist) == pytest.approx(1.0, abs=1e-5)
        spread.extend(expected)
    # The check means something only if the values differ from slot to slot.
    assert max(spread) - min(spread) > 0.5


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_prefix_cache_and_batching_match_one_full_pass_per_excerpt(tiny, batch_size):
    cached = ExactSimulator("hf:tiny", loaded=tiny, batch_size=batch_size)
    naive = ExactSimulator("hf:tiny", loaded=tiny, mode="naive")
    fast = cached.simulate_sync(EXPLANATION, EXCERPTS)
    slow = naive.simulate_sync(EXPLANATION, EXCERPTS)
    assert [len(r.expected) for r in fast] == [len(e) for e in EXCERPTS]
    for a, b in zip(fast, slow, strict=True):
        assert a.expected == pytest.approx(b.expected, abs=1e-4)
        for da, db in zip(a.distributions, b.distributions, strict=True):
            assert da == pytest.approx(db, abs=1e-4)
    # The prefix is computed once: the cached path reports fewer computed tokens.
    assert sum(r.usage.prompt_tokens for r in fast) < sum(r.usage.prompt_tokens for r in slow)


def test_async_simulate_gives_the_sync_results(tiny):
    sim = ExactSimulator("hf:tiny", loaded=tiny)
    results = asyncio.run(sim.simulate(EXPLANATION, EXCERPTS[:2]))
    assert [r.expected for r in results] == [
        r.expected for r in sim.simulate_sync(EXPLANATION, EXCERPTS[:2])
    ]


def test_from_llm_shares_the_loaded_model(tiny):
    llm = LocalLLM("hf:tiny", loaded=tiny)
    sim = ExactSimulator.from_llm(llm, batch_size=3)
    assert sim.loaded is tiny and sim.spec == "hf:tiny" and sim.batch_size == 3
    assert sim.strategy == "exact" and sim.scale_max == 9


def test_a_prompt_longer_than_the_context_is_an_error_not_a_truncation(smol_tokenizer):
    short = LocalModel(
        path="short",
        model=tiny_llama(len(smol_tokenizer), context=256),
        tokenizer=smol_tokenizer,
        device="cpu",
    )
    sim = ExactSimulator("hf:short", loaded=short)
    with pytest.raises(PromptTooLong, match="over the limit of 256"):
        sim.simulate_sync(EXPLANATION, [[" word"] * 80])
    # A short excerpt fits once the few-shot examples are dropped, deliberately.
    built = build_simulation_ids(
        smol_tokenizer, EXPLANATION, [[" word"] * 10], max_prompt_tokens=256
    )
    assert built.n_examples < 2
    assert len(built.prefix) + len(built.excerpts[0].ids) <= 256
    results = sim.simulate_sync(EXPLANATION, [[" word"] * 10])
    assert len(results[0].expected) == 10


def test_max_prompt_tokens_shortens_by_dropping_examples(tiny):
    full = build_simulation_ids(tiny.tokenizer, EXPLANATION, EXCERPTS)
    assert full.n_examples == 2
    limit = len(full.prefix) + max(len(e.ids) for e in full.excerpts) - 1
    shorter = build_simulation_ids(tiny.tokenizer, EXPLANATION, EXCERPTS, max_prompt_tokens=limit)
    assert shorter.n_examples < 2
    sim = ExactSimulator("hf:tiny", loaded=tiny, max_prompt_tokens=limit)
    assert sim.prompt_limit() == limit
    assert len(sim.simulate_sync(EXPLANATION, EXCERPTS)) == len(EXCERPTS)
    with pytest.raises(PromptTooLong):
        build_simulation_ids(tiny.tokenizer, EXPLANATION, EXCERPTS, max_prompt_tokens=20)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary has "10" as one token."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    words = ["<unk>", "\t", "\n", " ", "<start>", "<end>", "unknown", "cat", "dog", "the"]
    words += [str(v) for v in range(11)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s|[^\s]+"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_a_tokenizer_with_a_single_token_ten_uses_the_0_to_10_scale():
    tokenizer = word_tokenizer()
    scale_max, ids = value_token_ids(tokenizer)
    assert scale_max == 10
    assert tokenizer.convert_ids_to_tokens(ids) == [str(v) for v in range(11)]
    loaded = LocalModel("words", tiny_llama(len(tokenizer)), tokenizer, "cpu")
    excerpts = [["cat", " ", "dog"], ["the", "cat"]]
    fast = ExactSimulator("hf:words", loaded=loaded).simulate_sync("cat", excerpts)
    slow = ExactSimulator("hf:words", loaded=loaded, mode="naive").simulate_sync("cat", excerpts)
    for a, b in zip(fast, slow, strict=True):
        assert a.scale_max == 10
        assert all(len(d) == 11 for d in a.distributions)
        assert a.expected == pytest.approx(b.expected, abs=1e-4)


def test_bad_options_are_config_errors(tiny):
    with pytest.raises(ConfigError):
        ExactSimulator("hf:tiny", loaded=tiny, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ExactSimulator("hf:tiny", loaded=tiny, batch_size=0)


@pytest.mark.slow
def test_embedded_smollm2_exact_simulation():
    sim = ExactSimulator("hf:embedded")
    excerpts = [
        ["The", " cat", " chased", " the", " mouse", "."],
        ["Stock", " prices", " fell", " sharply", " today", "."],
    ]
    fast = sim.simulate_sync("the word cat", excerpts)
    slow = ExactSimulator("hf:embedded", mode="naive").simulate_sync("the word cat", excerpts)
    for a, b in zip(fast, slow, strict=True):
        assert a.scale_max == 9
        assert a.expected == pytest.approx(b.expected, abs=1e-4)
        assert all(0.0 <= e <= 9.0 for e in a.expected)
    # The fast CPU setting: bfloat16 weights from the spec, close to float32 but its own
    # numbers (so its results are keyed by the spec, never mixed with float32 ones).
    half = ExactSimulator("hf:embedded?dtype=bfloat16")
    assert next(half.loaded.model.parameters()).dtype == torch.bfloat16
    for a, b in zip(half.simulate_sync("the word cat", excerpts), fast, strict=True):
        assert a.expected == pytest.approx(b.expected, abs=0.25)
        assert a.expected != pytest.approx(b.expected, abs=1e-4)


def test_parity_holds_for_a_gpt2_architecture(smol_tokenizer):
    """Learned position embeddings and a different body: explicit positions must be right."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(smol_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=1024
    )
    loaded = LocalModel("gpt2ish", GPT2LMHeadModel(config).eval(), smol_tokenizer, "cpu")
    fast = ExactSimulator("hf:g", loaded=loaded, batch_size=2).simulate_sync(EXPLANATION, EXCERPTS)
    slow = ExactSimulator("hf:g", loaded=loaded, mode="naive").simulate_sync(EXPLANATION, EXCERPTS)
    for a, b in zip(fast, slow, strict=True):
        assert a.expected == pytest.approx(b.expected, abs=1e-4)


def test_compact_rows_cost_a_token_less_per_row_and_read_the_same_slots(tiny):
    full = build_simulation_ids(tiny.tokenizer, EXPLANATION, EXCERPTS[:3])
    compact = build_simulation_ids(
        tiny.tokenizer, EXPLANATION, EXCERPTS[:3], prompt_version="simulate-v1-compact"
    )
    assert compact.prefix == full.prefix  # same instructions and few-shot rows
    tab = tiny.tokenizer("\t", add_special_tokens=False)["input_ids"][-1]
    for f, c, tokens in zip(full.excerpts, compact.excerpts, EXCERPTS[:3], strict=True):
        assert len(c.ids) == len(f.ids) - len(tokens)  # no `unknown` filler
        assert len(c.slots) == len(tokens)
        assert all(c.ids[s] == tab for s in c.slots)  # a value is read right after the tab
    cached = ExactSimulator("hf:tiny", loaded=tiny, prompt_version="simulate-v1-compact")
    naive = ExactSimulator(
        "hf:tiny", loaded=tiny, prompt_version="simulate-v1-compact", mode="naive"
    )
    for a, b in zip(
        cached.simulate_sync(EXPLANATION, EXCERPTS),
        naive.simulate_sync(EXPLANATION, EXCERPTS),
        strict=True,
    ):
        assert a.expected == pytest.approx(b.expected, abs=1e-4)


@pytest.mark.parametrize("version", ["simulate-v1-compact", "simulate-tuned-inline-v1"])
def test_slotless_prompts_refuse_strategies_that_find_slots_in_text(version):
    from neuroscribe.llm import make_llm
    from neuroscribe.simulator import make_simulator

    llm = make_llm("fake:rules")
    with pytest.raises(ConfigError, match="exact strategy only"):
        asyncio.run(make_simulator(llm, "prompt-logprobs", prompt_version=version))


INLINE = "simulate-tuned-inline-v1"


def test_the_inline_layout_reads_every_token_at_its_own_position(tiny):
    """One prompt token per (one-token) subject token, the text as it reads, and each
    value read at the token itself; cached and naive agree."""
    tok = tiny.tokenizer
    rows = build_simulation_ids(tok, EXPLANATION, EXCERPTS[:3], prompt_version="simulate-tuned-v1")
    inline = build_simulation_ids(tok, EXPLANATION, EXCERPTS[:3], prompt_version=INLINE)
    suffix = len(inline.excerpts[0].ids) - (inline.excerpts[0].slots[-1] + 1)
    for r, i, tokens in zip(rows.excerpts, inline.excerpts, EXCERPTS[:3], strict=True):
        pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in tokens]
        assert len(i.slots) == len(tokens)
        # Each token's value is read at its last id; nothing but the tokens in between.
        assert i.ids[: i.slots[-1] + 1] == [x for p in pieces for x in p]
        assert i.slots == [sum(len(p) for p in pieces[: k + 1]) - 1 for k in range(len(pieces))]
        assert len(i.ids) - suffix < len(r.ids) / 2
    # A newline token stands as itself, not as the rows' escaped "\\n".
    text = build_simulation_prompt(EXPLANATION, EXCERPTS[2], version=INLINE).text()
    assert " tabs\t and\n<end>" in text
    cached = ExactSimulator("hf:tiny", loaded=tiny, prompt_version=INLINE, batch_size=2)
    naive = ExactSimulator("hf:tiny", loaded=tiny, prompt_version=INLINE, mode="naive")
    for a, b, tokens in zip(
        cached.simulate_sync(EXPLANATION, EXCERPTS),
        naive.simulate_sync(EXPLANATION, EXCERPTS),
        EXCERPTS,
        strict=True,
    ):
        assert len(a.expected) == len(tokens)
        assert a.expected == pytest.approx(b.expected, abs=1e-4)


def test_the_inline_layout_gives_an_empty_token_a_position(tiny):
    sim = build_simulation_ids(tiny.tokenizer, EXPLANATION, [["a", "", "b"]], prompt_version=INLINE)
    assert len(sim.excerpts[0].slots) == 3
    assert len(set(sim.excerpts[0].slots)) == 3
