"""The ground-truth suite file: synthetic units with known explanations, as JSONL.

One `GroundTruthUnit` per line. A unit has real text (tokens), activations from a known
rule, its true explanation and several false ones, each with the score a perfect
simulator would give it (`oracle_score`). Users add their own units (a lab's known
neurons, a probe's labels) by writing lines of the same shape; `load_suite` checks
every line and says which line and field is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from neuroscribe.errors import DataError

SUITE_SCHEMA_VERSION = 1
Split = Literal["dev", "test"]
ExcerptUse = Literal["explain", "score", "validation"]


class SuiteExcerpt(BaseModel):
    """One excerpt: tokens as the subject model saw them and the unit's activations."""

    tokens: list[str]
    activations: list[float]
    kind: str = "top"  # top | random | contrast (how the builder picked it)
    # explain: shown to explainers; score: held out; validation: for explainers that
    # choose among candidates (best-of-k, revision), never scored.
    use: ExcerptUse = "score"

    @model_validator(mode="after")
    def _check(self) -> SuiteExcerpt:
        if not self.tokens:
            raise ValueError("an excerpt needs at least one token")
        if len(self.tokens) != len(self.activations):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.activations)} activations")
        bad = [i for i, a in enumerate(self.activations) if not math.isfinite(a)]
        if bad:
            raise ValueError(f"activation at token {bad[0]} is not a finite number")
        return self


class FalseExplanation(BaseModel):
    text: str
    kind: str  # over-general | over-specific | neighbouring-concept | wrong-context | ...
    # The correlation a perfect simulator of this explanation would reach on the score
    # excerpts (None when unknown, e.g. in a hand-written suite).
    oracle_score: float | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("an explanation cannot be empty")
        return v.strip()


class GroundTruthUnit(BaseModel):
    schema_version: int = SUITE_SCHEMA_VERSION
    id: str = Field(min_length=1, max_length=200)
    split: Split
    category: str = "custom"
    explanation: str
    false_explanations: list[FalseExplanation]
    excerpts: list[SuiteExcerpt]
    source: dict[str, str] = Field(default_factory=dict)

    @field_validator("explanation")
    @classmethod
    def _explanation(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the true explanation cannot be empty")
        return v.strip()

    @model_validator(mode="after")
    def _check(self) -> GroundTruthUnit:
        if self.schema_version > SUITE_SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is newer than this neuroscribe "
                f"reads ({SUITE_SCHEMA_VERSION})"
            )
        if not self.false_explanations:
            raise ValueError("a unit needs at least one false explanation to rank against")
        texts = [self.explanation] + [f.text for f in self.false_explanations]
        if len({t.lower() for t in texts}) != len(texts):
            raise ValueError("the true and false explanations must all differ")
        scored = self.score_excerpts
        if not scored:
            raise ValueError("a unit needs at least one excerpt with use 'score'")
        values = [a for e in scored for a in e.activations]
        if max(values) == min(values):
            raise ValueError("the score excerpts' activations are constant: nothing to predict")
        return self

    @property
    def score_excerpts(self) -> list[SuiteExcerpt]:
        return [e for e in self.excerpts if e.use == "score"]

    @property
    def explain_excerpts(self) -> list[SuiteExcerpt]:
        return [e for e in self.excerpts if e.use == "explain"]

    @property
    def validation_excerpts(self) -> list[SuiteExcerpt]:
        return [e for e in self.excerpts if e.use == "validation"]

    def candidates(self) -> list[tuple[str, str]]:
        """(kind, text) of every explanation to rank, the true one first."""
        return [("true", self.explanation)] + [(f.kind, f.text) for f in self.false_explanations]


def builtin_suite_path() -> Path:
    return Path(__file__).parent / "data" / "builtin.jsonl"


def load_suite(path: str | Path | None = None) -> list[GroundTruthUnit]:
    """Read and check a suite file (the shipped one when `path` is None)."""
    p = Path(path) if path is not None else builtin_suite_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read ground-truth suite {p}: {e.strerror or e}") from e
    units: list[GroundTruthUnit] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            unit = GroundTruthUnit.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {n}: not JSON ({e.msg})") from e
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "line"
            raise DataError(f"{p}, line {n}, {where}: {err['msg']}") from e
        if unit.id in seen:
            raise DataError(f"{p}, line {n}: unit id {unit.id!r} appears twice")
        seen.add(unit.id)
        units.append(unit)
    if not units:
        raise DataError(f"ground-truth suite {p} holds no units")
    return units


def select(units: Sequence[GroundTruthUnit], split: str = "test") -> list[GroundTruthUnit]:
    """The units of one split (`dev`, `test` or `all`)."""
    if split == "all":
        return list(units)
    if split not in ("dev", "test"):
        raise DataError(f"unknown suite split {split!r}: use dev, test or all")
    return [u for u in units if u.split == split]


def write_suite(path: str | Path, units: Iterable[GroundTruthUnit]) -> None:
    from neuroscribe.jsonl import write_text_atomic

    lines = [u.model_dump_json(exclude_none=False) for u in units]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
