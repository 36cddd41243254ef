"""Detection's other-unit negatives: excerpts that make other units fire, not this one.

The unit here follows a known rule (it fires on the word " cat"); `RuleProbe` applies
the rule where the subject model would run (the real `UnitProbe` on the embedded model
is tested in tests/test_unit_probe.py). What is checked: which other units' excerpts
become negatives, that the unit's own excerpts never do, that they are judged and
reported alone, found once per unit, planned by the dry run, and wired to the config,
the API and the command line.
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.engine import run_stage
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, Explanation, ImageRef, NeuronRecord
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.detection import DetectionScorer
from neuroscribe.scorer.other_units import (
    Candidate,
    OtherUnitNegatives,
    anchor_in,
    candidates_for,
    pool_from,
)
from neuroscribe.splits import SplitConfig, split_record
from neuroscribe.stages.score import ScoreStage

UNIT = "m/0/7"
PICTURE = ImageRef(sha256="a" * 64, path=f"images/{'a' * 64}.png", width=8, height=8)
SPLITS = SplitConfig()


def words(text: str) -> list[str]:
    return re.findall(r" ?[^ ]+", text)


def excerpt(text: str, peak_word: str | None, value: float = 5.0) -> ActivationRecord:
    toks = words(text)
    acts = [value if peak_word and t.strip() == peak_word else 0.0 for t in toks]
    return ActivationRecord(tokens=toks, activations=acts)


def cat_unit() -> NeuronRecord:
    """12 top excerpts on " cat" (each with its own id words), 9 quiet random ones."""
    top = [excerpt(f" t{j}a t{j}b cat t{j}c", "cat", 10 - 0.5 * j) for j in range(12)]
    rnd = [excerpt(f" r{j}a r{j}b r{j}c", None) for j in range(9)]
    return NeuronRecord(unit_id=UNIT, most_positive_activation_records=top, random_sample=rnd)


def other(u: int, text: str, peak: str) -> NeuronRecord:
    return NeuronRecord(unit_id=f"m/0/{u}", most_positive_activation_records=[excerpt(text, peak)])


OTHERS = [
    other(1, " the dog barks at night", "dog"),  # quiet for the cat unit: a negative
    other(2, " a cat naps in sun", "naps"),  # the cat unit fires: rejected
    other(3, " t0a t0b cat t0c", "t0b"),  # the cat unit's train excerpt: never shown
    other(4, " rain falls on the roof", "roof"),  # a negative
]


# Output directions (what each unit writes): the napping-cat unit is the cat unit's
# nearest neighbour, the roof unit next, the dog unit far.
DIRECTIONS = {
    UNIT: [1.0, 0.0, 0.0],
    "m/0/1": [0.5, 0.866, 0.0],
    "m/0/2": [0.99, 0.141, 0.0],
    "m/0/3": [0.0, 0.0, 1.0],
    "m/0/4": [0.95, 0.0, 0.312],
}


class RuleProbe:
    """Where the subject model runs: the cat unit's rule (5.0 on " cat"), tokens split at
    spaces as the records' are, and the units' directions above. Keeps every text it was
    asked about."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def activations_async(self, record, texts):
        self.texts += texts
        return [excerpt(t, "cat") for t in texts]

    def direction(self, record):
        import torch

        if record.unit_id not in DIRECTIONS:
            raise ConfigError(f"unit {record.unit_id}: no output direction here")
        return torch.tensor(DIRECTIONS[record.unit_id]) * 3.0  # not unit length


def explanation(text: str = "the word cat", i: int = 0) -> Explanation:
    train = [x.excerpt_id for x in split_record(cat_unit(), SPLITS).train]
    return Explanation(
        explanation_id=f"e{i}", unit_id=UNIT, sample_index=i, text=text, explainer="fake:x",
        prompt_version="v", config_hash="h", train_excerpts=train,
    )  # fmt: skip


def make_run(tmp_path, n_explanations: int = 1) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", [cat_unit(), *OTHERS])
    append_jsonl(run.path("explanations"), [explanation(i=i) for i in range(n_explanations)])
    return run


def says_yes_to_pets(request, **params) -> str:
    """A judge with a vague idea of the unit: yes to any pet."""
    lines = re.findall(r"^(\d+)\. (.*)$", request[-1]["content"], re.M)
    return "\n".join(f"{k} {'yes' if 'cat' in t or 'dog' in t else 'no'}" for k, t in lines)


def score(run: RunDir, scorer) -> None:
    stage = ScoreStage(scorer, [r for r in run.records() if r.unit_id == UNIT], SPLITS)
    summary = asyncio.run(run_stage(stage, run, show_progress=False))
    assert (summary.done, summary.failed) == (len(run.explanations()), 0)


def test_other_units_excerpts_become_negatives_only_where_the_unit_stays_quiet(tmp_path):
    run = make_run(tmp_path, n_explanations=2)
    probe = RuleProbe()
    llm = FakeLLM("fake:judge", answers=says_yes_to_pets)
    others = OtherUnitNegatives(2, run_dir=run.root, probe=probe)
    score(run, DetectionScorer(llm, spec=llm.spec, other_units=2, other_negatives=others))

    first, second = run.scores()
    d = first.details
    # The dog and the roof: quiet for the cat unit. The napping cat fired (rejected, if it
    # was probed before two were found); the unit's own random excerpt was never probed.
    assert sorted(d["other_units"]) == ["other:m/0/1:top:0", "other:m/0/4:top:0"]
    assert d["n_other_unit_negatives"] == 2 and d["n_other_rejected"] in (0, 1)
    assert " t0a t0b cat t0c" not in probe.texts
    assert d["n_negative"] == 7 + 2
    shown = " ".join(c.messages[-1]["content"] for c in llm.calls)
    assert "dog" in shown and "roof" in shown and "t0b" not in shown
    # Judged like any negative and reported alone: the vague judge says yes to the dog.
    assert first.metrics["other_unit_accuracy"] == 0.5
    kinds = {a["excerpt_id"]: a["kind"] for a in d["answers"]}
    assert kinds["other:m/0/1:top:0"] == "other"
    # 7 positives all yes; of 9 negatives only the dog is said yes to.
    assert first.metrics["balanced_accuracy"] == pytest.approx((1 + 8 / 9) / 2)
    assert first.metrics["hard_negative_accuracy"] is None  # no random one holds " cat"
    # Found once per unit: the second explanation was judged on the same excerpts.
    assert len(probe.texts) == d["n_other_probed"]
    assert second.details["other_units"] == d["other_units"]
    # The option is part of the scores' configuration; without it the hash is as before.
    plain = DetectionScorer(None, spec="fake:judge")
    assert "other_units" not in plain.config()
    assert (
        DetectionScorer(None, spec="x", other_units=2, run_dir=run.root).config()["other_units"]
        == 2
    )


def test_a_unit_that_fires_on_every_other_excerpt_gets_none_and_says_so(tmp_path):
    run = make_run(tmp_path)

    class FiresOnAll(RuleProbe):
        async def activations_async(self, record, texts):
            self.texts += texts
            return [
                ActivationRecord(tokens=words(t), activations=[9.0] * len(words(t))) for t in texts
            ]

    llm = FakeLLM("fake:judge", answers=says_yes_to_pets)
    others = OtherUnitNegatives(2, run_dir=run.root, probe=FiresOnAll())
    score(run, DetectionScorer(llm, spec=llm.spec, other_units=2, other_negatives=others))
    (s,) = run.scores()
    assert s.details["n_other_unit_negatives"] == 0 and s.details["n_other_rejected"] == 3
    assert "no_other_unit_negatives" in s.flags and "other_unit_accuracy" not in s.metrics


def test_candidates_skip_the_unit_its_own_texts_and_image_units():
    image = NeuronRecord(
        unit_id="v/0/1",
        most_positive_activation_records=[
            ActivationRecord(tokens=["<image>"], activations=[3.0], image=PICTURE)
        ],
    )
    pool = pool_from([cat_unit(), *OTHERS, image])
    assert [c.unit_id for c in pool] == [UNIT, "m/0/1", "m/0/2", "m/0/3", "m/0/4"]
    assert pool[0].excerpt_id == "top:0" and pool[1].peak == 1  # " dog"
    got = candidates_for(cat_unit(), pool, random.Random(0))
    assert sorted(c.unit_id for c in got) == ["m/0/1", "m/0/2", "m/0/4"]
    # The window's anchor survives a different split of the same text.
    c = Candidate("m/0/1", "top:0", (" the", " dog", " barks"), 1)
    assert anchor_in([" th", "e", " do", "g", " barks"], c) == 2


def test_misuse_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="run directory"):
        OtherUnitNegatives(2)
    with pytest.raises(ConfigError, match="at least 1"):
        OtherUnitNegatives(0, run_dir=tmp_path)
    shown = ActivationRecord(tokens=["<image>"], activations=[3.0], image=PICTURE)
    image = NeuronRecord(unit_id="v/0/1", most_positive_activation_records=[shown])
    finder = OtherUnitNegatives(1, pool=[], probe=RuleProbe())
    with pytest.raises(DataError, match="text units"):
        asyncio.run(finder.find(image, random.Random(0), 1.0))


def test_dry_run_config_api_and_command_line_carry_the_option(tmp_path):
    from neuroscribe.cli.pipeline import _config

    run = make_run(tmp_path)
    config = _config({"run": str(run.root), "scorer": "detection", "other_unit_negatives": 3})
    assert config.score.other_unit_negatives == 3
    scorer, _ = api.planned_scorer(config)
    assert scorer.others is not None and scorer.others.n == 3
    assert scorer.others.run_dir == str(run.root)
    # Scorers that do not take the option never get it.
    from neuroscribe.scorer.simulation import SimulationScorer

    assert api._route(SimulationScorer, config) == {}
    assert api._route(DetectionScorer, config) == {"other_units": 3, "run_dir": run.root}
    # The dry run counts the other-unit items (planned: the first candidates, unprobed).
    rec = cat_unit()
    task = ScoreTask(explanation(), rec, split_record(rec, SPLITS), "h")
    plain = DetectionScorer(None, spec="fake:judge").planned_items(task)
    more = scorer.planned_items(task)
    assert len(more) == len(plain) + 3 and sum(it.kind == "other" for it in more) == 3
    with pytest.raises(ConfigError):
        RunConfig.build(run_dir=run.root, score={"other_unit_negatives": -1})


def test_neighbours_come_first_and_a_unit_without_direction_falls_back_to_random(tmp_path):
    run = make_run(tmp_path)
    probe = RuleProbe()
    finder = OtherUnitNegatives(1, run_dir=run.root, probe=probe)
    found = asyncio.run(finder.find(cat_unit(), random.Random(0), 1.0))
    # Nearest first: the napping cat (cosine 0.99) fires and is dropped; the roof (0.95)
    # is the negative; the far dog unit is never probed.
    d = found.details
    assert d["other_order"] == "neighbours" and d["other_units"] == ["other:m/0/4:top:0"]
    assert d["other_cosines"] == [pytest.approx(0.95, abs=1e-3)] and d["n_other_rejected"] == 1
    assert d["n_other_probed"] == 2 and not any("dog" in t for t in probe.texts)
    # Asked for random order, or a unit whose direction is unknown: the seeded order.
    plain = OtherUnitNegatives(3, run_dir=run.root, probe=RuleProbe(), order="random")
    got = asyncio.run(plain.find(cat_unit(), random.Random(0), 1.0)).details
    assert got["other_order"] == "random" and "other_cosines" not in got
    stranger = cat_unit().model_copy(update={"unit_id": "m/0/9"})
    finder = OtherUnitNegatives(3, run_dir=run.root, probe=RuleProbe())
    got = asyncio.run(finder.find(stranger, random.Random(0), 1.0)).details
    assert got["other_order"].startswith("random (no output direction: unit m/0/9")
    assert got["n_other_unit_negatives"] == 2  # the dog and the roof, as before
    with pytest.raises(ConfigError, match="order must be"):
        OtherUnitNegatives(1, run_dir=run.root, order="closest")
    scorer = DetectionScorer(None, spec="x", other_units=2, other_order="random", run_dir=run.root)
    assert scorer.config()["other_order"] == "random"
