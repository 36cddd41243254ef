"""The data model and JSONL files: validation with file:line, torn lines, crash safety."""

from __future__ import annotations

import json
import math

import pytest

from neuroscribe.errors import DataError
from neuroscribe.jsonl import append_jsonl, read_jsonl
from neuroscribe.schema import ActivationRecord, NeuronRecord, Score

OPENAI_STYLE = {
    "neuron_id": {"layer_index": 3, "neuron_index": 17},
    "most_positive_activation_records": [{"tokens": ["a", " b"], "activations": [0.0, 1.5]}],
    "random_sample": [{"tokens": ["c"], "activations": [0.1]}],
    "random_sample_by_quantile": [[{"tokens": ["d"], "activations": [0.2]}]],
    "quantile_boundaries": [0.0, 0.5],
    "mean": 0.1,
    "variance": 0.2,
    "skewness": 1.0,
    "kurtosis": 3.0,
}


def test_openai_class_tags_are_accepted():
    tagged = {**OPENAI_STYLE, "dataclass_name": "NeuronRecord"}
    tagged["random_sample"] = [
        {"dataclass_name": "ActivationRecord", "tokens": ["c"], "activations": [0.1]}
    ]
    rec = NeuronRecord.model_validate(tagged)
    assert rec.random_sample[0].tokens == ["c"]


def test_openai_neuron_file_loads_unchanged():
    rec = NeuronRecord.model_validate(OPENAI_STYLE)
    assert rec.unit_id == "unknown/3/17" and rec.layer == 3 and rec.index == 17
    dumped = rec.model_dump(exclude_none=True)
    for key, value in OPENAI_STYLE.items():
        assert dumped[key] == value


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tokens": ["a", "b"], "activations": [1.0]}, "2 tokens but 1 activations"),
        ({"tokens": [], "activations": []}, "no tokens"),
        ({"tokens": ["a"], "activations": [math.nan]}, "not finite"),
        ({"tokens": ["a"], "activations": [math.inf]}, "not finite"),
    ],
)
def test_bad_activation_records(record, message):
    with pytest.raises(ValueError, match=message):
        ActivationRecord.model_validate(record)


def _rec(i: int) -> NeuronRecord:
    return NeuronRecord(
        unit_id=f"m/0/{i}",
        most_positive_activation_records=[ActivationRecord(tokens=["x"], activations=[1.0])],
    )


def test_roundtrip_and_error_names_file_and_line(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, [_rec(0), _rec(1)])
    assert [r.unit_id for r in read_jsonl(p, NeuronRecord)] == ["m/0/0", "m/0/1"]
    with p.open("a") as f:
        f.write(
            '{"unit_id": "m/0/2", "most_positive_activation_records": [{"tokens": ["a"], "activations": [NaN]}]}\n'
        )
    with pytest.raises(DataError, match=r"r\.jsonl:3: invalid NeuronRecord.*not finite"):
        read_jsonl(p, NeuronRecord)


def test_malformed_line_in_the_middle_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_rec(0).model_dump_json() + "\n{not json\n" + _rec(1).model_dump_json() + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:2: malformed JSON"):
        read_jsonl(p, NeuronRecord)


def test_torn_last_line_is_dropped_and_repaired_on_append(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, [_rec(0)])
    with p.open("a") as f:
        f.write(_rec(1).model_dump_json()[:20])  # a crash mid-write
    assert [r.unit_id for r in read_jsonl(p, NeuronRecord)] == ["m/0/0"]
    assert "torn" in caplog.text
    append_jsonl(p, [_rec(2)])
    lines = p.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x) for x in lines)
    assert [r.unit_id for r in read_jsonl(p, NeuronRecord)] == ["m/0/0", "m/0/2"]


def test_scores_never_hold_nan():
    with pytest.raises(ValueError, match="not finite"):
        Score(
            explanation_id="e",
            unit_id="u",
            explanation="x",
            explainer="a",
            simulator="b",
            strategy="json",
            prompt_version="v",
            config_hash="h",
            score=math.nan,
            n_excerpts=1,
            n_tokens=1,
        )


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl", NeuronRecord)


def test_simulation_may_mark_missing_values_but_never_nan():
    from neuroscribe.schema import SequenceSimulation

    base = dict(
        explanation_id="e",
        unit_id="u",
        excerpt_id="top:0",
        kind="top",
        role="test",
        tokens=["a", "b"],
        true_activations=[0.0, 1.0],
        strategy="prompt-logprobs",
        simulator="m",
        prompt_version="v",
        config_hash="h",
    )
    sim = SequenceSimulation(**base, expected_activations=[0.5, None])
    assert sim.missing_slots == 1
    with pytest.raises(ValueError, match="not finite"):
        SequenceSimulation(**base, expected_activations=[0.5, math.nan])


def test_complete_last_line_without_newline_is_kept_on_append(tmp_path, caplog):
    # A file whose last line is whole but lacks its newline (written by hand or by
    # another tool): readers count it, so the next append must keep it, not cut it.
    p = tmp_path / "r.jsonl"
    p.write_text(_rec(0).model_dump_json() + "\n" + _rec(1).model_dump_json())
    assert [r.unit_id for r in read_jsonl(p, NeuronRecord)] == ["m/0/0", "m/0/1"]
    assert append_jsonl(p, [_rec(2)]) == 1
    assert [r.unit_id for r in read_jsonl(p, NeuronRecord)] == ["m/0/0", "m/0/1", "m/0/2"]
    assert p.read_text().endswith("\n") and len(p.read_text().splitlines()) == 3
    assert "torn" not in caplog.text


def test_lone_surrogate_is_refused_with_file_and_line(tmp_path):
    p = tmp_path / "r.jsonl"
    good = _rec(0).model_dump_json()
    # JSON may spell a lone surrogate as an escape; it is not Unicode and cannot be
    # written back as UTF-8, so reading names the line instead of crashing later.
    bad = good.replace('"unit_id":"m/0/0"', '"unit_id":"m/0/\\ud800"')
    assert bad != good
    p.write_text(good + "\n" + bad + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:2: .*lone surrogate"):
        read_jsonl(p, NeuronRecord)
    # A properly paired escape (an emoji) and an escaped backslash are fine.
    p.write_text(good.replace('"m/0/0"', '"m/0/\\ud83d\\ude00 \\\\ud800"') + "\n")
    assert read_jsonl(p, NeuronRecord)[0].unit_id == "m/0/\U0001f600 \\ud800"


def test_surrogate_written_as_raw_bytes_is_refused_too(tmp_path):
    # `json.loads` decodes bytes with "surrogatepass": the UTF-8 spelling of U+D800.
    p = tmp_path / "r.jsonl"
    raw = _rec(0).model_dump_json().encode().replace(b'"m/0/0"', b'"m/0/\xed\xa0\x80"')
    p.write_bytes(raw + b"\n")
    with pytest.raises(DataError, match=r"r\.jsonl:1: .*lone surrogate"):
        read_jsonl(p, NeuronRecord)
