"""Slots map back to the right subject token whatever the simulator's tokenizer does."""

from __future__ import annotations

import math

import pytest

from neuroscribe.errors import OutputError
from neuroscribe.llm.base import TokenLogprob
from neuroscribe.prompts import build_simulation_prompt
from neuroscribe.simulator.api import parse_activation_json
from neuroscribe.simulator.slots import find_echo_slots, find_generated_values

TRICKY = ["Caf", "é", " 日本", "語", "<|endoftext|>", "\n", "  ", "unknown", "\t", " end", "🙂"]


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from neuroscribe.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


def _encode(tokenizer, text: str) -> tuple[list[str], list[int]]:
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    return [text[s:e] for s, e in enc["offset_mapping"]], [s for s, _ in enc["offset_mapping"]]


def _server_tokens(tokenizer, text: str) -> list[str]:
    return _encode(tokenizer, text)[0]


def test_slots_found_with_a_real_tokenizer(smol_tokenizer):
    prompt = build_simulation_prompt("anything", TRICKY)
    text = prompt.text()
    toks, offsets = _encode(smol_tokenizer, text)
    slots = find_echo_slots(toks, len(TRICKY))
    # Every slot is the token that starts its row's "unknown", in row order.
    expected, start = [], len(prompt.prefix)
    for i in range(len(TRICKY)):
        expected.append(start + len(prompt.row_head(i)))
        start += len(prompt.row_head(i)) + len("unknown\n")
    assert [offsets[s] for s in slots] == expected
    assert all(toks[s].startswith("unk") for s in slots)


def test_slots_survive_lossy_multibyte_pieces(smol_tokenizer):
    toks = _server_tokens(smol_tokenizer, build_simulation_prompt("x", TRICKY).text())
    # A server may return partial UTF-8 pieces as replacement characters or nothing.
    lossy = ["\ufffd" if any(ord(c) > 127 for c in t) else t for t in toks]
    assert len(find_echo_slots(lossy, len(TRICKY))) == len(TRICKY)


def test_wrong_slot_count_and_merged_tab_are_errors():
    with pytest.raises(OutputError, match="found 1 value slots in the echoed prompt, expected 2"):
        find_echo_slots(["a", "\t", "unknown", "\n"], 2)
    with pytest.raises(OutputError, match="merges the tab"):
        find_echo_slots(["a", "\tunknown", "\n"], 1)


def test_generated_values_positions():
    toks = [
        "The",
        "\t",
        "0",
        "\n",
        " cat",
        "\t",
        "9",
        "\n",
        "10",
        "\t3",
        "\n",
        "x",
        "\t",
        " 1",
        "0",
    ]
    assert find_generated_values(toks) == [2, 6, 9, 13]
    assert find_generated_values(["a", "\t", "none", "\n"]) == []


def test_parse_activation_json():
    assert parse_activation_json('{"activations": [0, 3, 10]}', 3, 10) == [0.0, 3.0, 10.0]
    for bad, msg in [
        ('{"activations": [0, 3]}', "2 values for 3 tokens"),
        ("not json", "not valid JSON"),
        ('{"activations": [0, 3, 11]}', "not a number in 0..10"),
        ('{"values": [1, 2, 3]}', 'no "activations"'),
    ]:
        with pytest.raises(OutputError, match=msg):
            parse_activation_json(bad, 3, 10)


def test_token_logprob_reading_marks_missing_slots_and_fails_when_most_are():
    from neuroscribe.simulator.api import _read_distributions

    good = TokenLogprob("unknown", None, {"0": math.log(0.5), "2": math.log(0.5)})
    bad = TokenLogprob("unknown", None, {"the": -0.1})
    exp, dists = _read_distributions([good, bad, good, good], "x", 10)
    assert exp == [1.0, None, 1.0, 1.0] and dists[1] is None and len(dists[0]) == 11
    with pytest.raises(OutputError, match="3 of 4 slots"):
        _read_distributions([good, bad, bad, bad], "x", 10)
