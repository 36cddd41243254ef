"""Build a ground-truth suite: apply the known rules to real text and pick excerpts.

For every rule unit the builder tokenises a corpus with the subject tokenizer, cuts it
into fixed-length windows and picks:
- `explain` excerpts: the windows where the true rule fires most (what an explainer sees);
- `score` excerpts, disjoint from those: more top windows, random windows, and for every
  false explanation the window where it disagrees most with the truth ("contrast"), so
  that a perfect simulator could tell them apart on the excerpts it is shown.

A false explanation whose oracle score (its rule's correlation with the true rule on the
score excerpts) is above `max_oracle` is dropped: even a perfect simulator could barely
rank it below the truth, so it would measure nothing. The split into dev and test halves
alternates within each category, so both halves hold every kind of rule.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from neuroscribe.groundtruth.rules import HIGH, UnitSpec, unit_specs
from neuroscribe.groundtruth.suite import FalseExplanation, GroundTruthUnit, SuiteExcerpt
from neuroscribe.scorer.maths import correlation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    window: int = 20  # tokens per excerpt
    max_windows: int = 6000  # windows read from the corpus
    n_explain: int = 5
    n_top: int = 3
    n_random: int = 2
    max_oracle: float = 0.7
    min_false: int = 2
    seed: int = 0


def windows_from_texts(
    texts: Iterable[str], tokenizer, *, window: int, max_windows: int
) -> list[list[str]]:
    """Non-overlapping windows of `window` token strings from the documents, in order."""
    from neuroscribe.datasets.windows import TokenStrings

    strings = TokenStrings(tokenizer)
    out: list[list[str]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - window + 1, window):
            toks = strings(ids[start : start + window])
            if any("\ufffd" in t for t in toks):
                continue  # a cut multi-byte character: the text would read wrong
            out.append(toks)
            if len(out) >= max_windows:
                return out
    return out


def _stable_order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def assign_splits(specs: Sequence[UnitSpec]) -> dict[str, str]:
    """dev/test per unit id: alternate within each category in a fixed hashed order."""
    out: dict[str, str] = {}
    by_cat: dict[str, list[UnitSpec]] = {}
    for s in specs:
        by_cat.setdefault(s.category, []).append(s)
    flip = 0
    for cat in sorted(by_cat):
        for s in sorted(by_cat[cat], key=lambda s: _stable_order(s.id)):
            out[s.id] = "dev" if flip % 2 == 0 else "test"
            flip += 1
    return out


def _norm(values: Sequence[float]) -> list[float]:
    return [v / HIGH for v in values]


def build_unit(
    spec: UnitSpec,
    windows: Sequence[list[str]],
    split: str,
    options: BuildOptions,
    source: dict[str, str],
) -> GroundTruthUnit | None:
    """One suite unit from a rule spec, or None when the corpus cannot support it."""
    rng = random.Random(f"{options.seed}:{spec.id}")
    true_acts = [spec.true(w) for w in windows]
    firing = [i for i, a in enumerate(true_acts) if max(a) > 0]
    need = options.n_explain + options.n_top
    if len(firing) < need:
        log.info("unit %s: the rule fires in only %d windows, skipped", spec.id, len(firing))
        return None
    # Top windows: strongest max, then most activation; rotated through so that the
    # explain and score excerpts see the same variety.
    ranked = sorted(firing, key=lambda i: (-max(true_acts[i]), -sum(true_acts[i]), i))
    pool = ranked[: max(need * 4, 40)]
    rng.shuffle(pool)
    explain_ids = pool[: options.n_explain]
    top_ids = pool[options.n_explain : need]
    used = set(explain_ids) | set(top_ids)
    rest = [i for i in range(len(windows)) if i not in used]
    random_ids = rng.sample(rest, min(options.n_random, len(rest)))
    used |= set(random_ids)

    false_acts = {rule.explanation: [rule(w) for w in windows] for _, rule in spec.false}
    contrast_ids: list[int] = []
    for _, rule in spec.false:
        fa = false_acts[rule.explanation]

        def disagreement(i: int, fa: list[list[float]] = fa) -> float:
            t, f = _norm(true_acts[i]), _norm(fa[i])
            return sum(abs(a - b) for a, b in zip(t, f, strict=True))

        candidates = [i for i in range(len(windows)) if i not in used]
        if not candidates:
            break
        best = max(candidates, key=lambda i: (disagreement(i), -i))
        if disagreement(best) > 0:
            contrast_ids.append(best)
            used.add(best)

    score_ids = top_ids + random_ids + contrast_ids
    kinds = ["top"] * len(top_ids) + ["random"] * len(random_ids) + ["contrast"] * len(contrast_ids)
    truth = [a for i in score_ids for a in true_acts[i]]
    if max(truth) == min(truth):
        return None
    falses = []
    for kind, rule in spec.false:
        pred = [a for i in score_ids for a in false_acts[rule.explanation][i]]
        oracle = correlation(truth, pred).value
        if oracle > options.max_oracle:
            log.info("unit %s: dropped %r (oracle %.2f)", spec.id, rule.explanation, oracle)
            continue
        falses.append(FalseExplanation(text=rule.explanation, kind=kind, oracle_score=oracle))
    if len(falses) < options.min_false:
        log.info("unit %s: fewer than %d usable false explanations", spec.id, options.min_false)
        return None
    excerpts = [
        SuiteExcerpt(tokens=windows[i], activations=true_acts[i], kind="top", use="explain")
        for i in explain_ids
    ] + [
        SuiteExcerpt(tokens=windows[i], activations=true_acts[i], kind=k, use="score")
        for i, k in zip(score_ids, kinds, strict=True)
    ]
    return GroundTruthUnit(
        id=spec.id,
        split=split,  # type: ignore[arg-type]
        category=spec.category,
        explanation=spec.true.explanation,
        false_explanations=falses,
        excerpts=excerpts,
        source=source,
    )


def build_suite(
    texts: Iterable[str],
    tokenizer,
    *,
    source: dict[str, str],
    options: BuildOptions | None = None,
    ids: Iterable[str] | None = None,
) -> list[GroundTruthUnit]:
    """Every rule unit that the corpus supports, with its dev/test split."""
    options = options or BuildOptions()
    windows = windows_from_texts(
        texts, tokenizer, window=options.window, max_windows=options.max_windows
    )
    specs = unit_specs(ids)
    splits = assign_splits(unit_specs())
    units = []
    for spec in specs:
        unit = build_unit(spec, windows, splits[spec.id], options, source)
        if unit is not None:
            units.append(unit)
    return units
