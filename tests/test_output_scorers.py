"""The output-side scorers (logit-lens, steering) on a tiny random Llama and the fake judge.

What a user would notice: the promoted tokens are the top of W_U · direction; a neuron
whose output column is the unembedding of " cat" promotes " cat" and, steered, makes the
model say " cat"; the judge's answers become the metrics; an unusable judge answer fails
the explanation (no number is made up); strength 0 changes nothing; an API subject model
is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import lru_cache

import pytest
import torch

from _record_helpers import embedded_tokenizer
from neuroscribe.engine import estimate_stage, run_stage
from neuroscribe.errors import ConfigError, OutputError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.local import ModelStore, load_local_model
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord, RunManifest
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.logit_lens import LogitLensScorer
from neuroscribe.scorer.output_side import (
    final_norm,
    lens_logits,
    parse_ab,
    parse_rating,
    unit_direction,
)
from neuroscribe.scorer.steering import SteeringScorer, generate
from neuroscribe.splits import SplitConfig, split_record
from neuroscribe.stages.score import ScoreStage

LAYER, CAT_NEURON, OTHER_NEURON = 1, 5, 9
SPLITS = SplitConfig()


@lru_cache(maxsize=1)
def cat_id() -> int:
    ids = embedded_tokenizer()(" cat", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    return ids[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 2-layer random Llama with the SmolLM2 tokenizer; neuron CAT_NEURON of layer 1
    writes exactly the unembedding of " cat"; the final norm has a non-trivial scale."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = embedded_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        vocab_size=len(tok),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 1.5)
        down = model.model.layers[LAYER].mlp.down_proj.weight  # [d_model, d_ff]
        down[:, CAT_NEURON] = model.lm_head.weight[cat_id()] / model.model.norm.weight
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def store():
    return ModelStore()  # this module's own copy of the tiny model


def unit_record(index: int, name: str = "tiny-llama") -> NeuronRecord:
    def top(j: int) -> ActivationRecord:
        return ActivationRecord(tokens=[" a", " cat", " b"], activations=[0, 3 - 0.1 * j, 0])

    def rnd(j: int) -> ActivationRecord:
        return ActivationRecord(tokens=[" x", " y", " z"], activations=[0, 0.1, 0])

    return NeuronRecord(
        unit_id=f"{name}/{LAYER}/{index}",
        model=name,
        layer=LAYER,
        index=index,
        most_positive_activation_records=[top(j) for j in range(12)],
        random_sample=[rnd(j) for j in range(9)],
        max_activation=3.0,
        unit_type="mlp",
        layer_index=LAYER,
        module=f"model.layers.{LAYER}.mlp.down_proj",
        hook="input",
    )


def explanation(rec: NeuronRecord, text: str = "the word cat", i: int = 0) -> Explanation:
    train = [x.excerpt_id for x in split_record(rec, SPLITS).train]
    return Explanation(
        explanation_id=f"e{i}-{rec.index}",
        unit_id=rec.unit_id,
        sample_index=i,
        text=text,
        explainer="fake:x",
        prompt_version="v",
        config_hash="h",
        train_excerpts=train,
    )


def task_for(rec: NeuronRecord, text: str = "the word cat") -> ScoreTask:
    return ScoreTask(explanation(rec, text), rec, split_record(rec, SPLITS), "h")


def user_text(messages) -> str:
    return messages[-1]["content"]


def quoted_explanation(messages) -> str:
    return json.loads(user_text(messages).split("\n")[1])


# ---------------------------------------------------------------- parsing


def test_rating_and_choice_parsing_take_only_clear_answers():
    assert parse_rating("7") == 7
    assert parse_rating("7/10") == 7
    assert parse_rating("Rating: 8.5") == 8.5
    assert parse_rating("**3**") == 3
    assert parse_rating("The tokens are all animals.\n9") == 9
    for bad in ("", "about 7 or 8", "I cannot tell", "11", "-1", "seven"):
        with pytest.raises(OutputError):
            parse_rating(bad)
    assert parse_ab("A") == "A" and parse_ab(" b.") == "B" and parse_ab("Answer: (B)") == "B"
    for bad in ("", "A or B", "both", "neither of them"):
        with pytest.raises(OutputError):
            parse_ab(bad)


# ---------------------------------------------------------------- logit lens


@pytest.mark.slow
def test_promoted_tokens_are_the_top_of_unembedding_times_direction(tiny_dir, store):
    loaded = load_local_model(f"hf:{tiny_dir}", store=store)
    model = loaded.model
    w_u = model.lm_head.weight.detach()
    direction = model.model.layers[LAYER].mlp.down_proj.weight[:, OTHER_NEURON].detach()
    rec = unit_record(OTHER_NEURON)
    for use_norm in (False, True):
        scorer = LogitLensScorer(
            FakeLLM(), spec="fake:j", subject=f"hf:{tiny_dir}", store=store, final_norm=use_norm
        )
        lens, where = scorer.lens(rec)
        # By hand: RMSNorm of v alone is g * v / rms(v): a positive rescaling of g * v.
        v = direction * model.model.norm.weight.detach() if use_norm else direction
        want = torch.topk(w_u @ v, 10).indices.tolist()
        assert [i for i, _, _ in lens.promoted] == want
        assert [i for i, _, _ in lens.suppressed] == torch.topk(-(w_u @ v), 10).indices.tolist()
        assert [t for _, t, _ in lens.promoted] == [embedded_tokenizer().decode([i]) for i in want]
        assert where["kind"] == "mlp" and where["module"] == f"model.layers.{LAYER}.mlp.down_proj"
    # The norm matters here (its scale is not uniform), so the two rankings differ.
    assert final_norm(model)[0] == "model.norm"
    plain = lens_logits(model, direction, use_norm=False)
    normed = lens_logits(model, direction, use_norm=True)
    assert not torch.equal(plain.argsort(), normed.argsort())


def test_a_neuron_writing_the_unembedding_of_cat_promotes_cat(tiny_dir, store):
    scorer = LogitLensScorer(FakeLLM(), spec="fake:j", subject=str(tiny_dir), store=store)
    lens, _ = scorer.lens(unit_record(CAT_NEURON))
    assert lens.promoted[0][:2] == (cat_id(), " cat")


def test_judge_ratings_become_the_metrics_with_a_control(tiny_dir, store):
    def judge(messages, **params):
        return "8" if "cat" in quoted_explanation(messages) else "Rating: 2/10"

    llm = FakeLLM(answers=judge)
    scorer = LogitLensScorer(llm, spec="fake:j", subject=f"hf:{tiny_dir}", store=store)
    out = asyncio.run(scorer.score(task_for(unit_record(CAT_NEURON))))
    assert out.metrics == {
        "agreement_minus_control": 6.0,
        "agreement": 8.0,
        "control_agreement": 2.0,
    }
    assert out.primary_metric == "agreement_minus_control"
    assert out.details["promoted"][0]["token"] == " cat"
    assert out.details["prompt_version"] == "logit-lens-v1"
    assert "cat" not in out.details["control"] and out.details["control"]
    assert out.usage.requests == 2 and out.usage.prompt_tokens > 0
    # The promoted tokens are what the judge saw; the control is judged on the same ones.
    assert all('" cat"' in user_text(c.messages) for c in llm.calls)
    assert quoted_explanation(llm.calls[1].messages) == out.details["control"]
    # Every explanation of the unit gets the same control.
    other = asyncio.run(scorer.score(task_for(unit_record(CAT_NEURON), "small animals")))
    assert other.details["control"] == out.details["control"]
    assert other.metrics["agreement"] == 2.0


def test_an_unparseable_judge_answer_is_retried_then_fails_clearly(tiny_dir, store):
    llm = FakeLLM(answers=lambda messages, **params: "It is mostly about animals.")
    scorer = LogitLensScorer(llm, spec="fake:j", subject=f"hf:{tiny_dir}", store=store)
    with pytest.raises(OutputError, match=r"not a rating from 0 to 10 after 3 attempts") as e:
        asyncio.run(scorer.score(task_for(unit_record(CAT_NEURON))))
    assert e.value.raw == "It is mostly about animals."
    assert e.value.usage.requests == 6  # both prompts, 3 attempts each, all accounted
    temps = sorted(c.params["temperature"] for c in llm.calls)
    assert temps == [0.0, 0.0, 0.7, 0.7, 0.7, 0.7]


def test_logit_lens_through_the_score_stage_finds_the_subject_in_the_manifest(
    tiny_dir, store, tmp_path
):
    rec = unit_record(CAT_NEURON)
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", [rec])
    append_jsonl(run.path("explanations"), [explanation(rec)])
    run.write_manifest(
        RunManifest(subject={"model": rec.model, "source": str(tiny_dir), "dtype": "float32"})
    )
    llm = FakeLLM(answers=lambda messages, **params: "9")
    # No subject option: the run being scored names it (api.score passes run_dir).
    scorer = LogitLensScorer(llm, spec="fake:j", store=store, run_dir=str(run.root))
    stage = ScoreStage(scorer, run.records(), SPLITS)
    with run.lock():
        summary = asyncio.run(run_stage(stage, run, show_progress=False))
    assert summary.done == 1, summary
    (score,) = run.scores()
    assert score.scorer == "logit-lens" and score.metrics["agreement"] == 9.0
    assert score.details["subject_from"] == "manifest"
    assert score.details["promoted"][0]["token"] == " cat"
    (usage,) = run.usage()
    assert usage.stage == "score-logit-lens" and usage.prompt_tokens > 0
    # The dry run counts the same two prompts (placeholders for the tokens).
    planned, note = LogitLensScorer.planned("fake:j", strategy="auto", prompt_version=None)
    run.path("scores").unlink()
    est = estimate_stage(ScoreStage(planned, run.records(), SPLITS), run)
    assert est.requests == 2 and est.prompt_tokens > 0 and "placeholder" in note


@pytest.mark.parametrize("cls", [LogitLensScorer, SteeringScorer])
def test_an_api_subject_model_is_refused(cls, tmp_path):
    for subject in ("gpt-4o-mini", "openai:gpt-4o", "http://localhost:8000/v1"):
        with pytest.raises(ConfigError, match="local model"):
            cls(FakeLLM(), spec="fake:j", subject=subject)
    with pytest.raises(ConfigError, match="local model"):
        asyncio.run(cls.build(FakeLLM(), subject="gpt-4o-mini", strategy="auto"))


def test_module_units_are_refused_with_a_reason(tiny_dir, store):
    rec = unit_record(CAT_NEURON).model_copy(update={"layer": "1:self_attn.o_proj:output"})
    rec.__pydantic_extra__["unit_type"] = "module"
    loaded = load_local_model(f"hf:{tiny_dir}", store=store)
    scorer = LogitLensScorer(FakeLLM(), spec="fake:j", subject=str(tiny_dir), store=store)
    with pytest.raises(ConfigError, match="MLP neurons and SAE latents"):
        unit_direction(loaded.model, rec, scorer.resolver.ref(rec))


# ---------------------------------------------------------------- steering


def test_steering_at_strength_zero_is_unsteered_and_strong_steering_says_cat(tiny_dir, store):
    loaded = load_local_model(f"hf:{tiny_dir}", store=store)
    rec = unit_record(CAT_NEURON)
    scorer = SteeringScorer(FakeLLM(), spec="fake:j", subject=f"hf:{tiny_dir}", store=store)
    d = scorer.resolver.direction(loaded, rec, scorer.resolver.ref(rec))
    prompts = ["I think that", "The"]
    with loaded.lock:
        plain = generate(loaded, prompts, max_new_tokens=6)
        zero = generate(loaded, prompts, direction=d, amount=0.0, max_new_tokens=6)
        strong = generate(loaded, prompts, direction=d, amount=200.0, max_new_tokens=6)
    assert zero == plain
    assert all(len(t) > 0 for t in plain)
    assert all(t.count(" cat") >= 5 for t in strong), strong
    assert not loaded.model.model.layers[LAYER].mlp.down_proj._forward_hooks


def test_steering_judge_picks_become_accuracy_minus_control(tiny_dir, store):
    def judge(messages, **params):
        text = user_text(messages)
        if "cat" in quoted_explanation(messages):
            a = re.search(r"^A: (.*)$", text, re.M).group(1)
            return "A" if "cat" in a else "B"
        return "A"  # the control: always the first

    llm = FakeLLM(answers=judge)
    scorer = SteeringScorer(
        llm,
        spec="fake:j",
        subject=f"hf:{tiny_dir}",
        store=store,
        strengths=(30.0, 60.0),
        max_new_tokens=6,
    )
    task = task_for(unit_record(CAT_NEURON))
    out = asyncio.run(scorer.score(task))
    d = out.details
    assert all(" cat" in t for s in d["steered"].values() for t in s)
    assert not any(" cat" in t for t in d["unsteered"])
    pairs = scorer.pairs(task)
    first = sum(steered_first for _, _, steered_first in pairs) / len(pairs)
    assert 0 < first < 1  # both orders occur
    assert out.metrics["judge_accuracy"] == 1.0
    assert out.metrics["control_accuracy"] == pytest.approx(first)
    assert out.metrics["accuracy_minus_control"] == pytest.approx(1.0 - first)
    assert d["n_pairs"] == 8 and d["n_identical"] == 0 and out.flags == []
    assert out.usage.requests == 16
    assert d["write_norm"] > 0 and d["residual_norm"] > 0
    # Deterministic: a second scorer (generations cached, the same seeded order) agrees.
    again = SteeringScorer(
        FakeLLM(answers=judge),
        spec="fake:j",
        subject=f"hf:{tiny_dir}",
        store=store,
        strengths=(30.0, 60.0),
        max_new_tokens=6,
    )
    assert asyncio.run(again.score(task)).metrics == out.metrics


def test_steering_without_effect_is_a_tie_and_is_not_sent(tiny_dir, store):
    llm = FakeLLM(answers=lambda messages, **params: "A")
    scorer = SteeringScorer(
        llm,
        spec="fake:j",
        subject=f"hf:{tiny_dir}",
        store=store,
        strengths=(1e-6,),
        max_new_tokens=4,
    )
    out = asyncio.run(scorer.score(task_for(unit_record(CAT_NEURON))))
    assert out.metrics == {
        "accuracy_minus_control": 0.0,
        "judge_accuracy": 0.5,
        "control_accuracy": 0.5,
    }
    assert out.flags == ["no_effect"] and not llm.calls


def test_steering_unparseable_judge_fails_and_bad_options_are_refused(tiny_dir, store):
    llm = FakeLLM(answers=lambda messages, **params: "Both are equally catty.")
    scorer = SteeringScorer(
        llm, spec="fake:j", subject=f"hf:{tiny_dir}", store=store, strengths=(30.0,),
        max_new_tokens=4, prompts=("The",),
    )  # fmt: skip
    with pytest.raises(OutputError, match="not A or B after 3 attempts"):
        asyncio.run(scorer.score(task_for(unit_record(CAT_NEURON))))
    for bad in ({"strengths": (0.0, 4.0)}, {"strengths": ()}, {"prompts": ("",)}):
        with pytest.raises(ConfigError):
            SteeringScorer(llm, spec="fake:j", **bad)


@pytest.mark.slow
def test_logit_lens_and_steering_on_the_embedded_model():
    """The embedded SmolLM2 as subject (found from the record's model name), fake judge."""
    from neuroscribe.embedded import EMBEDDED_NAME

    rec = unit_record(7, name=EMBEDDED_NAME)
    lens = LogitLensScorer(FakeLLM(answers=lambda m, **p: "5"), spec="fake:j")
    out = asyncio.run(lens.score(task_for(rec)))
    assert out.details["subject_from"] == "record" and len(out.details["promoted"]) == 10
    steer = SteeringScorer(
        FakeLLM(answers=lambda m, **p: "A"), spec="fake:j", max_new_tokens=6, prompts=("The",)
    )
    out = asyncio.run(steer.score(task_for(rec)))
    assert out.details["unsteered"][0] and set(out.details["steered"]) == {"4.0", "8.0"}


def test_logit_lens_by_name_through_the_api_finds_the_subject_of_the_run(tiny_dir, tmp_path):
    # `neuroscribe score RUN --scorer logit-lens --simulator JUDGE`: the registry builds
    # the scorer, and the run directory the facade scores names the subject model.
    from neuroscribe import api
    from neuroscribe.config import RunConfig
    from neuroscribe.llm.fake import _chat_tokens, tokenize
    from neuroscribe.llm.registry import REGISTRY, BackendInfo, register_backend

    info = BackendInfo(name="lensjudge", prefix="lensjudge:", local=True,
                       token_counter=lambda spec: (lambda t: len(tokenize(t)), _chat_tokens, "fake"))  # fmt: skip
    register_backend(
        "lensjudge:", lambda spec, **o: FakeLLM(spec, answers=lambda m, **p: "8"), info
    )
    try:
        rec = unit_record(CAT_NEURON)
        run = RunDir(tmp_path / "run")
        run.records_dir.mkdir(parents=True)
        append_jsonl(run.records_dir / "r.jsonl", [rec])
        append_jsonl(run.path("explanations"), [explanation(rec)])
        run.write_manifest(
            RunManifest(subject={"model": rec.model, "source": str(tiny_dir), "dtype": "float32"})
        )
        config = RunConfig.build(
            run_dir=run.root,
            score={"scorer": "logit-lens", "model": "lensjudge:x"},
            jobs={"show_progress": False},
        )
        summary = asyncio.run(api.score_async(config))
        assert summary.done == 1, summary
        (score,) = run.scores()
        assert score.details["subject_from"] == "manifest"
        assert score.details["promoted"][0]["token"] == " cat"
    finally:
        REGISTRY._entries.pop("lensjudge:", None)
