"""Ground truth for image scores: synthetic image units with known rules over the emoji set.

Each unit's activation on an emoji is a known rule of its metadata (category,
subcategory, name), e.g. 1 for every emoji of subcategory "food-fruit", or graded
("animals, most strongly mammals": mammals 1, other animals 0.4). It comes with its true
explanation and three hard false ones (over-general, over-specific, a neighbouring
concept), each also a rule, so the score a perfect simulator would give it is known
(`oracle_score`: its rule's correlation with the truth on the unit's test images; a false
explanation above `MAX_ORACLE` is dropped, since even a perfect simulator could barely
rank it below the truth).

A unit is a normal `NeuronRecord` of image excerpts in a run directory
(`records/emoji-groundtruth.jsonl`, pictures under `images/`), its caption the emoji's
name; the rules' explanations are kept beside it in `vision_groundtruth.jsonl`. Its
excerpts are laid out so that `split_record(record, GT_SPLITS)` gives: train = 5 top
images, test = 5 top images + every contrast image (where a false explanation fires and
the truth does not) + random images, calibration = 1 top + 2 random images.

Units alternate between a `dev` half (tune prompts on it) and a `test` half (report).
`check_image_scorer` scores every candidate explanation of each unit with any scorer
and summarises as the text suite's check does (`groundtruth.check.summarize`: how often
the true explanation ranks first, mean margin and its interval, chance).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from neuroscribe.errors import DataError
from neuroscribe.groundtruth.check import CheckSummary, UnitCheck, summarize
from neuroscribe.groundtruth.suite import FalseExplanation
from neuroscribe.schema import ActivationRecord, NeuronRecord
from neuroscribe.scorer.maths import correlation
from neuroscribe.splits import SplitConfig, Splits, split_record

RECORDS_FILE = "emoji-groundtruth.jsonl"
SUITE_FILE = "vision_groundtruth.jsonl"
MODEL = "emoji-rules"
PEAK = 4.0  # the raw activation of a rule value of 1
MAX_ORACLE = 0.7
N_TOP = 11  # 5 train + 5 test + 1 calibration
N_RANDOM = 6
# Contrast images per false explanation (where it fires and the truth does not): an
# over-general explanation gets one more, as its false positives are what sinks it.
CONTRAST_PER_FALSE = {"over-general": 3}
DEFAULT_CONTRAST = 2

GT_SPLITS = SplitConfig(
    n_train=5,
    n_test_top=5,
    n_calibration_top=1,
    n_test_random=N_RANDOM + 3 + 2 * DEFAULT_CONTRAST,  # every contrast and random image
    n_calibration_random=2,
    n_validation_top=0,
    n_validation_random=0,
)


@dataclass(frozen=True)
class Emoji:
    key: str  # "emoji/<file>"
    name: str  # lower case: the caption
    category: str
    subcategory: str
    load: Callable[[], Any]


Rule = Callable[[Emoji], float]


def sub(*names: str) -> Rule:
    keep = set(names)
    return lambda e: 1.0 if e.subcategory in keep else 0.0


def cat(*names: str) -> Rule:
    keep = set(names)
    return lambda e: 1.0 if e.category in keep else 0.0


def words(*ws: str, within: Rule | None = None) -> Rule:
    """1 where the name holds one of the words (a whole word, plural -s allowed)."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ws) + r")s?\b")

    def rule(e: Emoji) -> float:
        hit = bool(pattern.search(e.name))
        return 1.0 if hit and (within is None or within(e) > 0) else 0.0

    return rule


def either(*rules: Rule) -> Rule:
    return lambda e: max(r(e) for r in rules)


def graded(strong: Rule, weak: Rule, level: float = 0.4) -> Rule:
    return lambda e: max(strong(e), level * weak(e))


ANIMALS = ("animal-mammal", "animal-bird", "animal-marine", "animal-reptile", "animal-amphibian")
OTHER_ANIMALS = (*ANIMALS[1:], "animal-bug")
FOOD = ("food-fruit", "food-vegetable", "food-prepared", "food-asian", "food-sweet")
VEHICLES = ("transport-ground", "transport-air", "transport-water")


@dataclass(frozen=True)
class RuleUnit:
    """A rule unit's spec: id, category, the true rule and the false ones (kind, text, rule)."""

    id: str
    category: str
    explanation: str
    rule: Rule
    false: tuple[tuple[str, str, Rule], ...]


def _f(kind: str, text: str, rule: Rule) -> tuple[str, str, Rule]:
    return (kind, text, rule)


OG, OS, NB = "over-general", "over-specific", "neighbouring-concept"

RULE_UNITS: tuple[RuleUnit, ...] = (
    RuleUnit("fruit", "food", "fruit", sub("food-fruit"), (
        _f(OG, "food and drink", cat("Food & Drink")),
        _f(OS, "citrus fruit such as lemons and limes", words("lemon", "lime", "tangerine")),
        _f(NB, "vegetables", sub("food-vegetable")),
    )),
    RuleUnit("vegetables", "food", "vegetables", sub("food-vegetable"), (
        _f(OG, "food", sub(*FOOD)),
        _f(OS, "carrots and corn", words("carrot", "corn")),
        _f(NB, "fruit", sub("food-fruit")),
    )),
    RuleUnit("drinks", "food", "drinks and beverages", sub("drink"), (
        _f(OG, "food and drink", cat("Food & Drink")),
        _f(OS, "coffee and tea", words("tea", "teacup", "teapot", "coffee", "beverage")),
        _f(NB, "plates, bowls and cutlery", sub("dishware")),
    )),
    RuleUnit("sweets", "food", "sweets and desserts", sub("food-sweet"), (
        _f(OG, "food", sub(*FOOD)),
        _f(OS, "ice cream", words("ice cream")),
        _f(NB, "fruit", sub("food-fruit")),
    )),
    RuleUnit("mammals", "animals", "mammals such as dogs, cats and horses", sub("animal-mammal"), (
        _f(OG, "animals", sub(*ANIMALS, "animal-bug")),
        _f(OS, "dogs", words("dog", "poodle")),
        _f(NB, "birds", sub("animal-bird")),
    )),
    RuleUnit("birds", "animals", "birds", sub("animal-bird"), (
        _f(OG, "animals", sub(*ANIMALS, "animal-bug")),
        _f(OS, "ducks, geese and swans", words("duck", "goose", "swan")),
        _f(NB, "insects and bugs", sub("animal-bug")),
    )),
    RuleUnit("sea-animals", "animals", "sea animals such as fish, whales and octopuses",
             sub("animal-marine"), (
        _f(OG, "animals", sub(*ANIMALS, "animal-bug")),
        _f(OS, "fish", words("fish", "blowfish")),
        _f(NB, "birds", sub("animal-bird")),
    )),
    RuleUnit("flowers", "nature", "flowers", sub("plant-flower"), (
        _f(OG, "plants", sub("plant-flower", "plant-other")),
        _f(OS, "roses", words("rose")),
        _f(NB, "trees", words("tree")),
    )),
    RuleUnit("land-vehicles", "transport", "land vehicles such as cars, buses and trains",
             sub("transport-ground"), (
        _f(OG, "vehicles and transport of every kind", sub(*VEHICLES)),
        _f(OS, "police cars", words("police")),
        _f(NB, "aircraft", sub("transport-air")),
    )),
    RuleUnit("aircraft", "transport", "aircraft such as planes and helicopters",
             sub("transport-air"), (
        _f(OG, "vehicles and transport of every kind", sub(*VEHICLES)),
        _f(OS, "rockets", words("rocket")),
        _f(NB, "boats and ships", sub("transport-water")),
    )),
    RuleUnit("weather", "nature", "weather and the sky: sun, moon, clouds, rain and snow",
             sub("sky & weather"), (
        _f(OG, "nature and the outdoors", either(cat("Animals & Nature"), sub("sky & weather"))),
        _f(OS, "the moon", words("moon")),
        _f(NB, "clocks and time", sub("time")),
    )),
    RuleUnit("clocks", "objects", "clocks, watches and hourglasses", sub("time"), (
        _f(OG, "objects", either(cat("Objects"), sub("time"))),
        _f(OS, "hourglasses", words("hourglass")),
        _f(NB, "the moon and the stars", words("moon", "star")),
    )),
    RuleUnit("instruments", "objects", "musical instruments", sub("musical-instrument"), (
        _f(OG, "music and sound", sub("music", "musical-instrument", "sound")),
        _f(OS, "guitars", words("guitar")),
        _f(NB, "sports equipment", sub("sport")),
    )),
    RuleUnit("sports", "activities", "sports balls and sports equipment", sub("sport"), (
        _f(OG, "games, events and activities", cat("Activities")),
        _f(OS, "footballs", words("football", "soccer")),
        _f(NB, "musical instruments", sub("musical-instrument")),
    )),
    RuleUnit("clothing", "objects", "clothing, shoes and accessories", sub("clothing"), (
        _f(OG, "objects", cat("Objects")),
        _f(OS, "shoes", words("shoe", "boot", "sandal")),
        _f(NB, "tools", sub("tool")),
    )),
    RuleUnit("tools", "objects", "tools such as hammers, wrenches and axes", sub("tool"), (
        _f(OG, "objects", cat("Objects")),
        _f(OS, "hammers", words("hammer")),
        _f(NB, "household items", sub("household")),
    )),
    RuleUnit("buildings", "places", "buildings such as houses, offices and castles",
             sub("place-building"), (
        _f(OG, "places", cat("Travel & Places")),
        _f(OS, "castles", words("castle")),
        _f(NB, "vehicles", sub(*VEHICLES)),
    )),
    RuleUnit("smiling", "people", "smiling and laughing faces", sub("face-smiling"), (
        _f(OG, "faces", cat("Smileys & Emotion")),
        _f(OS, "faces crying tears of joy", words("joy")),
        _f(NB, "sad and worried faces", sub("face-concerned")),
    )),
    RuleUnit("people-sport", "people", "people doing sports such as swimming and cycling",
             sub("person-sport"), (
        _f(OG, "people", cat("People & Body")),
        _f(OS, "swimmers", words("swimmer", "swimming")),
        _f(NB, "sports balls and equipment", sub("sport")),
    )),
    RuleUnit("graded-animals", "graded", "animals, most strongly mammals",
             graded(sub("animal-mammal"), sub(*OTHER_ANIMALS)), (
        _f(OG, "living things: animals and plants", cat("Animals & Nature")),
        _f(OS, "pets such as dogs and cats", words("dog", "cat", "poodle")),
        _f(NB, "birds", sub("animal-bird")),
    )),
    RuleUnit("graded-food", "graded", "food, most strongly sweets and desserts",
             graded(sub("food-sweet"), sub(*FOOD)), (
        _f(OG, "food and drink", cat("Food & Drink")),
        _f(OS, "cakes", words("cake", "cupcake", "shortcake")),
        _f(NB, "fruit", sub("food-fruit")),
    )),
    RuleUnit("graded-vehicles", "graded", "vehicles, most strongly aircraft",
             graded(sub("transport-air"), sub(*VEHICLES)), (
        _f(OG, "travel and places", cat("Travel & Places")),
        _f(OS, "helicopters", words("helicopter")),
        _f(NB, "boats and ships", sub("transport-water")),
    )),
)  # fmt: skip


class ImageGroundTruthUnit(BaseModel):
    """A rule unit as stored beside its record: the explanations to rank."""

    unit_id: str
    rule_id: str
    split: Literal["dev", "test"]
    category: str
    explanation: str
    false_explanations: list[FalseExplanation]

    def candidates(self) -> list[tuple[str, str]]:
        """(kind, text) of every explanation to rank, the true one first."""
        return [("true", self.explanation)] + [(f.kind, f.text) for f in self.false_explanations]


# -- the emoji ------------------------------------------------------------------------------


def load_emoji() -> list[Emoji]:
    """The offline emoji set (`scripts/fetch_images.sh` fetches it; an error says so)."""
    from neuroscribe.vision.sources import emoji_items

    out = []
    for it in emoji_items():
        labels = (*it.labels, "", "")
        out.append(Emoji(it.key, it.caption or it.key, labels[0], labels[1], it.load))
    return out


def _stable(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _spatial(value: float) -> list[list[float]]:
    """A 4×4 map peaking at `value` in the middle (for the overlay and the pixels route)."""
    weights = [[0.25, 0.5, 0.5, 0.25], [0.5, 1.0, 1.0, 0.5], [0.5, 1.0, 1.0, 0.5],
               [0.25, 0.5, 0.5, 0.25]]  # fmt: skip
    return [[round(value * w, 4) for w in row] for row in weights]


def _pick_contrast(
    spec: RuleUnit, pool: Sequence[Emoji], used: set[str]
) -> tuple[list[Emoji], list[Emoji]]:
    """Per false explanation, the emoji where it fires most above the truth; and the
    rest of the pool in a fixed pseudo-random order."""
    contrast: list[Emoji] = []
    for kind, text, rule in spec.false:
        ranked = sorted(
            (e for e in pool if e.key not in used and rule(e) > spec.rule(e)),
            key=lambda e: (-(rule(e) - spec.rule(e)), _stable(f"{spec.id}|{text}|{e.key}")),
        )
        for e in ranked[: CONTRAST_PER_FALSE.get(kind, DEFAULT_CONTRAST)]:
            contrast.append(e)
            used.add(e.key)
    return contrast, sorted(
        (e for e in pool if e.key not in used), key=lambda e: _stable(f"{spec.id}|random|{e.key}")
    )


def build_unit_record(
    spec: RuleUnit, index: int, pool: Sequence[Emoji], store: Any
) -> NeuronRecord | None:
    """The unit's record (pictures put in `store`), or None when the set cannot hold it."""
    firing = [e for e in pool if spec.rule(e) > 0]
    peak = max((spec.rule(e) for e in firing), default=0.0)
    strongest = sorted(
        (e for e in firing if spec.rule(e) == peak), key=lambda e: _stable(f"{spec.id}|{e.key}")
    )
    if len(strongest) < N_TOP:
        return None
    top = strongest[:N_TOP]
    used = {e.key for e in top}
    contrast, rest = _pick_contrast(spec, pool, used)
    randoms = rest[:N_RANDOM]
    # split_record deals random excerpts test, calibration, test, calibration, then test:
    # positions 1 and 3 (calibration) get plain random images, every contrast goes to test.
    c, r = list(contrast), list(randoms)
    order = [c.pop(0) if c else r.pop(0), r.pop(0), c.pop(0) if c else r.pop(0), r.pop(0)]
    order += c + r

    def excerpt(e: Emoji) -> ActivationRecord:
        value = PEAK * spec.rule(e)
        ref = store.put(e.load(), source=e.key, caption=e.name)
        ref = ref.model_copy(update={"spatial": _spatial(value), "pooling": "max"})
        return ActivationRecord(tokens=[ref.description], activations=[value], image=ref)

    return NeuronRecord(
        model=MODEL,
        layer="rules",
        index=index,
        most_positive_activation_records=[excerpt(e) for e in top],
        random_sample=[excerpt(e) for e in order],
        max_activation=PEAK * peak,
    )


def oracle_scores(spec: RuleUnit, record: NeuronRecord, by_key: dict[str, Emoji]) -> list[float]:
    """Each false rule's correlation with the truth on the unit's test images."""
    test = split_record(record, GT_SPLITS).test
    truth = [x.record.activations[0] for x in test]
    keys = [x.record.image.source if x.record.image else "" for x in test]
    out = []
    for _, _, rule in spec.false:
        pred = [PEAK * rule(by_key[k]) for k in keys]
        out.append(correlation(truth, pred).value)
    return out


def build_image_suite(
    run_dir: str | Path, *, ids: Sequence[str] | None = None, emoji: Sequence[Emoji] | None = None
) -> list[ImageGroundTruthUnit]:
    """Write the rule units' records and pictures into `run_dir` and return the suite.

    `ids`: only these rule ids. Units alternate dev/test in `RULE_UNITS` order (each
    neighbouring pair of similar rules is split between the halves).
    """
    from neuroscribe.jsonl import write_text_atomic
    from neuroscribe.rundir import RunDir

    run = RunDir(run_dir)
    pool = list(emoji) if emoji is not None else load_emoji()
    by_key = {e.key: e for e in pool}
    units: list[ImageGroundTruthUnit] = []
    records: list[NeuronRecord] = []
    for i, spec in enumerate(RULE_UNITS):
        if ids is not None and spec.id not in ids:
            continue
        record = build_unit_record(spec, i, pool, run.images)
        if record is None:
            continue
        oracle = oracle_scores(spec, record, by_key)
        falses = [
            FalseExplanation(text=text, kind=kind, oracle_score=round(o, 4))
            for (kind, text, _), o in zip(spec.false, oracle, strict=True)
            if o <= MAX_ORACLE
        ]
        if len(falses) < 2:
            continue
        records.append(record)
        units.append(
            ImageGroundTruthUnit(
                unit_id=record.unit_id,
                rule_id=spec.id,
                split="dev" if i % 2 == 0 else "test",
                category=spec.category,
                explanation=spec.explanation,
                false_explanations=falses,
            )
        )
    if not units:
        raise DataError("no ground-truth image unit could be built from the emoji set")
    run.records_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        run.records_dir / RECORDS_FILE, "".join(r.model_dump_json() + "\n" for r in records)
    )
    write_text_atomic(run.root / SUITE_FILE, "".join(u.model_dump_json() + "\n" for u in units))
    return units


def load_image_suite(
    run_dir: str | Path, split: str = "all"
) -> list[tuple[ImageGroundTruthUnit, NeuronRecord]]:
    """The suite written by `build_image_suite`, with each unit's record; `split` dev,
    test or all."""
    from neuroscribe.rundir import RunDir

    run = RunDir(run_dir)
    path = run.root / SUITE_FILE
    if not path.is_file():
        raise DataError(f"{path}: no image ground-truth suite (build_image_suite writes it)")
    units = [
        ImageGroundTruthUnit.model_validate(json.loads(line))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    records = {r.unit_id: r for r in run.records()}
    if split not in ("dev", "test", "all"):
        raise DataError(f"unknown suite split {split!r}: use dev, test or all")
    out = []
    for u in units:
        if split != "all" and u.split != split:
            continue
        if u.unit_id not in records:
            raise DataError(f"{path}: unit {u.unit_id} has no record in {run.records_dir}")
        out.append((u, records[u.unit_id]))
    return out


def candidate_task(
    unit: ImageGroundTruthUnit, record: NeuronRecord, splits: Splits, k: int, text: str
) -> Any:
    from neuroscribe.groundtruth.scorers import candidate_task as task

    return task(unit.rule_id, record, splits, k, text)


async def check_image_scorer(
    suite: Sequence[tuple[ImageGroundTruthUnit, NeuronRecord]],
    scorer: Any,
    on_unit: Callable[[UnitCheck], None] | None = None,
) -> tuple[CheckSummary, list[UnitCheck]]:
    """Score every candidate explanation of every unit with `scorer` (its headline metric
    ranks them) on the unit's held-out images, as a run would split them."""
    import time

    from neuroscribe.groundtruth.scorers import score_candidates

    checked = []
    for unit, record in suite:
        splits = split_record(record, GT_SPLITS)
        oracle = {f.text: f.oracle_score for f in unit.false_explanations}
        start = time.perf_counter()
        results, usage = await score_candidates(
            scorer,
            unit.candidates(),
            oracle,
            lambda k, text, unit=unit, record=record, splits=splits: candidate_task(
                unit, record, splits, k, text
            ),
        )
        check = UnitCheck(
            unit_id=unit.rule_id,
            category=unit.category,
            split=unit.split,
            candidates=results,
            usage=usage,
            seconds=time.perf_counter() - start,
        )
        checked.append(check)
        if on_unit is not None:
            on_unit(check)
    return summarize(checked), checked


__all__ = [
    "GT_SPLITS",
    "RULE_UNITS",
    "Emoji",
    "ImageGroundTruthUnit",
    "RuleUnit",
    "build_image_suite",
    "check_image_scorer",
    "load_emoji",
    "load_image_suite",
]
