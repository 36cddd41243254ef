"""Deterministic, disjoint excerpt splits.

Top excerpts (strongest first) are dealt round-robin into train / test / calibration,
so every split gets a share of strong and weaker excerpts; random excerpts are dealt into
test / calibration. The explainer sees only `train`; scores use only `test` (and fit
their calibration on `calibration`). Random excerpts identical to a train excerpt are
dropped so the scorer never sees text the explainer saw.

`contrast` (`n_contrast`, image units by default) is the weakest random excerpts left
over after every other split: the explainer sees them as what the unit ignores, so they
count as train excerpts and are never scored.

`validation` (for explainers that select or revise, e.g. best-of-k) takes the strongest
top and random excerpts left over once train, test and calibration are full, so turning
it on changes no other split: scores with and without it are on the same test excerpts.
Neither the explainer's prompt nor any score line ever sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field, model_validator

from neuroscribe.errors import DataError
from neuroscribe.schema import ActivationRecord, NeuronRecord


class SplitConfig(BaseModel):
    n_train: int = Field(5, ge=1, le=1000)
    n_test_top: int = Field(5, ge=0, le=1000)
    n_test_random: int = Field(5, ge=0, le=1000)
    n_calibration_top: int = Field(2, ge=0, le=1000)
    n_calibration_random: int = Field(2, ge=0, le=1000)
    # Only explainers that select among candidates read these (see the module docstring).
    n_validation_top: int = Field(4, ge=0, le=1000)
    n_validation_random: int = Field(4, ge=0, le=1000)
    # Low-activating random excerpts shown to the explainer as contrast (image units: the
    # pictures a unit ignores); None: the unit kind's default (0 for text, 3 for images,
    # set by api.routed). Taken from what no other split uses.
    n_contrast: int | None = Field(None, ge=0, le=1000)

    def hashed(self) -> dict[str, int]:
        """The settings that decide train, test and calibration (the stages' key spaces):
        validation changes none of them, so it is left out (explainers that use it hash
        it themselves); contrast only when used, so runs without it keep their keys."""
        out = self.model_dump(exclude={"n_validation_top", "n_validation_random", "n_contrast"})
        if self.n_contrast:
            out["n_contrast"] = self.n_contrast
        return out

    @model_validator(mode="after")
    def _something_to_score(self) -> SplitConfig:
        if self.n_test_top + self.n_test_random < 1:
            raise ValueError("--n-test-top and --n-test-random leave no excerpt to score")
        return self


@dataclass(frozen=True)
class Excerpt:
    excerpt_id: str  # "top:3" or "random:7": index into the record's list
    kind: str  # "top" | "random"
    role: str  # "train" | "test" | "calibration"
    record: ActivationRecord


@dataclass
class Splits:
    train: list[Excerpt]
    test: list[Excerpt]
    calibration: list[Excerpt]
    validation: list[Excerpt] = field(default_factory=list)
    contrast: list[Excerpt] = field(default_factory=list)  # shown to the explainer too

    @property
    def held_out(self) -> list[Excerpt]:
        return self.test + self.calibration


def _deal(items: list[tuple[int, ActivationRecord]], quotas: list[int]) -> list[list[int]]:
    """Round-robin deal of item positions into folds with the given quotas."""
    folds: list[list[int]] = [[] for _ in quotas]
    f = 0
    for pos, _ in enumerate(items):
        for _ in range(len(quotas)):
            if len(folds[f]) < quotas[f]:
                folds[f].append(pos)
                f = (f + 1) % len(quotas)
                break
            f = (f + 1) % len(quotas)
        else:
            break
    return folds


def split_record(record: NeuronRecord, config: SplitConfig | None = None) -> Splits:
    cfg = config or SplitConfig()
    top = list(enumerate(record.most_positive_activation_records))
    if not top:
        raise DataError(f"unit {record.unit_id}: no top-activating excerpts to explain")
    top.sort(key=lambda item: (-item[1].max_activation, item[0]))
    if top[0][1].max_activation <= 0:
        raise DataError(
            f"unit {record.unit_id}: no excerpt has a positive activation (nothing to explain)"
        )
    folds = _deal(top, [cfg.n_train, cfg.n_test_top, cfg.n_calibration_top])
    train_ids = [top[p] for p in folds[0]]
    test_top = [top[p] for p in folds[1]]
    cal_top = [top[p] for p in folds[2]]
    dealt = {p for fold in folds for p in fold}
    val_top = [item for p, item in enumerate(top) if p not in dealt][: cfg.n_validation_top]

    # Images are the same excerpt when they are the same picture, whatever their caption.
    seen = {r.identity for _, r in train_ids}
    rnd = [(i, r) for i, r in enumerate(record.random_sample) if r.identity not in seen]
    rfolds = _deal(rnd, [cfg.n_test_random, cfg.n_calibration_random])
    test_rnd = [rnd[p] for p in rfolds[0]]
    cal_rnd = [rnd[p] for p in rfolds[1]]
    rdealt = {p for fold in rfolds for p in fold}
    rest = [item for p, item in enumerate(rnd) if p not in rdealt]
    val_rnd = rest[: cfg.n_validation_random]
    # Contrast: the weakest of the random excerpts no other split took (never scored on).
    contrast = sorted(rest[cfg.n_validation_random :], key=lambda it: (it[1].max_activation, it[0]))
    contrast = contrast[: cfg.n_contrast or 0]

    def ex(items, kind, role):
        return [Excerpt(f"{kind}:{i}", kind, role, r) for i, r in items]

    splits = Splits(
        train=ex(train_ids, "top", "train"),
        test=ex(test_top, "top", "test") + ex(test_rnd, "random", "test"),
        calibration=ex(cal_top, "top", "calibration") + ex(cal_rnd, "random", "calibration"),
        validation=ex(val_top, "top", "validation") + ex(val_rnd, "random", "validation"),
        contrast=ex(contrast, "random", "contrast"),
    )
    if not splits.test:
        raise DataError(
            f"unit {record.unit_id}: {len(top)} top and {len(record.random_sample)} random "
            f"excerpts leave none held out for scoring (train takes {cfg.n_train})"
        )
    return splits
