"""Hard negatives from other units: excerpts that make *another* unit fire, not this one.

Random non-activating excerpts are easy to reject: most of them are about nothing in
particular. delphi's "neighbour" negatives and the scorer-suite issue ask for harder
ones: text that strongly activates some other unit of the same run (so it is about
*something*, often something close), on which this unit stays quiet. A vague explanation
("technical text", "common words") says yes to those; a precise one says no.

Where they come from:

- the pool: the strongest top excerpt of every other text unit in the run directory
  (one per unit, read once per scorer);
- for the unit being scored, candidates from the pool, skipping any whose text is one of
  this unit's own excerpts (train or held out: nothing the explainer saw reaches a scorer
  this way), in one of two orders (`order`):
  "neighbours" (default, delphi's neighbour negatives): the other units whose output
  directions (what they write into the residual stream: an MLP neuron's output-projection
  column, an SAE latent's decoder row) are closest to this unit's by cosine come first,
  so the negatives are about nearby things; "random": an order fixed by the unit and the
  configuration (`unit_rng`). A unit whose direction is not known (a hook point other
  than an MLP or SAE) falls back to the random order, and `details` says why;
- the unit's real activations on each candidate, from its subject model
  (`datasets.probe.UnitProbe`, exactly as the recorder computes them); a candidate is a
  negative when its peak stays at or below `negative_fraction` of the strongest
  held-out top excerpt's, as for random negatives. Those that fire are counted
  (`n_other_rejected`) and left out.

The window shown is cut around the position where the *other* unit peaked, so what made
that unit fire is in view. A run whose subject model is not local (an API model, records
imported without their model) cannot be probed: the scorer says so instead of guessing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.schema import ActivationRecord, NeuronRecord
from neuroscribe.splits import Excerpt

KIND = "other"  # Item.kind of these negatives
# Candidates probed per negative wanted, at most: a unit that fires on most of the
# pool (a dense unit) gets fewer negatives rather than an unbounded search.
SEARCH_FACTOR = 4
PROBE_MAX_TOKENS = 512


@dataclass(frozen=True)
class Candidate:
    """The strongest top excerpt of another unit."""

    unit_id: str
    excerpt_id: str  # "top:0" in that unit's record
    tokens: tuple[str, ...]
    peak: int  # where that unit peaked

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass
class Found:
    """What was found for one unit: the negatives, where to crop each, and how."""

    excerpts: list[Excerpt]
    anchors: dict[str, int]  # excerpt id -> token position to centre the window on
    details: dict[str, Any]


def pool_from(records: Sequence[NeuronRecord]) -> list[Candidate]:
    """One candidate per text unit: its top excerpt with the largest activation."""
    out: list[Candidate] = []
    for r in records:
        if getattr(r, "modality", "text") != "text":
            continue
        best: tuple[float, int] | None = None
        for i, x in enumerate(r.most_positive_activation_records):
            if x.activations and (best is None or x.max_activation > best[0]):
                best = (x.max_activation, i)
        if best is None or best[0] <= 0:
            continue
        x = r.most_positive_activation_records[best[1]]
        peak = max(range(len(x.activations)), key=x.activations.__getitem__)
        out.append(Candidate(r.unit_id, f"top:{best[1]}", tuple(x.tokens), peak))
    return out


def own_texts(record: NeuronRecord) -> set[str]:
    """The texts of every excerpt of the unit (top and random, any split)."""
    quantiles = [x for q in record.random_sample_by_quantile or [] for x in q]
    return {
        "".join(x.tokens)
        for x in [*record.most_positive_activation_records, *record.random_sample, *quantiles]
    }


def candidates_for(
    record: NeuronRecord, pool: Sequence[Candidate], rng: random.Random
) -> list[Candidate]:
    """The pool in this unit's order, without the unit itself and its own texts."""
    own = own_texts(record)
    seen: set[str] = set()
    out: list[Candidate] = []
    for c in pool:
        if c.unit_id == record.unit_id or c.text in own or c.text in seen or not c.text.strip():
            continue
        seen.add(c.text)
        out.append(c)
    rng.shuffle(out)
    return out


def anchor_in(probed: Sequence[str], c: Candidate) -> int:
    """Where the other unit's peak lies in the probe's tokens (which may split the text
    differently from the recorded tokens): the token covering the peak's first character."""
    offset = len("".join(c.tokens[: c.peak]))
    end = 0
    for i, tok in enumerate(probed):
        end += len(tok)
        if end > offset:
            return i
    return max(0, len(probed) - 1)


ORDERS = ("neighbours", "random")


class OtherUnitNegatives:
    """Finds up to `n` other-unit negatives per unit (see the module's docstring).

    `run_dir`: the run whose other units make the pool (and whose manifest names the
    subject model). `probe`: a `UnitProbe` (default: one on `run_dir`); its `direction`
    gives the units' output directions for the "neighbours" `order`. `pool`: the
    candidates, when the caller has them (tests, a pool shared between scorers).
    """

    def __init__(
        self,
        n: int,
        *,
        run_dir: str | Path | None = None,
        probe: Any = None,
        pool: Sequence[Candidate] | None = None,
        order: str = "neighbours",
    ) -> None:
        if n < 1:
            raise ConfigError(f"other-unit negatives: ask for at least 1, not {n}")
        if order not in ORDERS:
            raise ConfigError(f"other-unit order must be one of {', '.join(ORDERS)}, not {order!r}")
        if run_dir is None and pool is None:
            raise ConfigError(
                "other-unit negatives come from the other units of a run directory; "
                "score a run (run_dir=RUN) to use them"
            )
        self.n = n
        self.order = order
        self.run_dir = None if run_dir is None else str(run_dir)
        self._probe = probe
        self._pool = None if pool is None else list(pool)
        self._units: dict[str, NeuronRecord] = {}  # pool units, without their excerpts
        self._directions: dict[str, Any] = {}  # unit id -> unit-length direction
        self._found: dict[str, Found] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- the pool and the probe, both lazy: a dry run opens neither model nor records
    def pool(self) -> list[Candidate]:
        if self._pool is None:
            from neuroscribe.rundir import RunDir

            assert self.run_dir is not None
            records = RunDir(self.run_dir).records()
            self._pool = pool_from(records)
            # Where each unit sits (layer, index, hook), for its direction; not its excerpts.
            empty = {"most_positive_activation_records": [], "random_sample": []}
            self._units = {
                r.unit_id: r.model_copy(update={**empty, "random_sample_by_quantile": None})
                for r in records
            }
        return self._pool

    def probe(self) -> Any:
        if self._probe is None:
            from neuroscribe.datasets.probe import UnitProbe

            self._probe = UnitProbe(run_dir=self.run_dir, max_tokens=PROBE_MAX_TOKENS)
        return self._probe

    # -- what a dry run counts: the first n candidates, as if all stayed quiet
    def planned(self, record: NeuronRecord, rng: random.Random) -> Found:
        chosen = candidates_for(record, self.pool(), rng)[: self.n]
        excerpts = [_excerpt(c, list(c.tokens), [0.0] * len(c.tokens)) for c in chosen]
        anchors = {x.excerpt_id: c.peak for x, c in zip(excerpts, chosen, strict=True)}
        return Found(excerpts, anchors, {})

    async def find(self, record: NeuronRecord, rng: random.Random, threshold: float) -> Found:
        """The negatives of `record`'s unit: candidates on which its activation peaks at or
        below `threshold`. Computed once per unit and scorer (every explanation of a unit
        is judged on the same excerpts)."""
        if getattr(record, "modality", "text") != "text":
            raise DataError(
                f"unit {record.unit_id}: other-unit negatives are for text units (an image "
                "unit's pictures cannot be probed as text)"
            )
        lock = self._locks.setdefault(record.unit_id, asyncio.Lock())
        async with lock:
            if record.unit_id not in self._found:
                self._found[record.unit_id] = await self._search(record, rng, threshold)
            return self._found[record.unit_id]

    def _direction(self, record: NeuronRecord) -> Any:
        if record.unit_id not in self._directions:
            v = self.probe().direction(record)
            self._directions[record.unit_id] = v / v.norm().clamp(min=1e-12)
        return self._directions[record.unit_id]

    def neighbours(
        self, record: NeuronRecord, queue: list[Candidate]
    ) -> tuple[list[Candidate], dict[str, float], str]:
        """`queue` with the units whose directions are closest to `record`'s first (a
        stable sort: equal ones keep their random order), their cosines, and the order
        used ("random (why)" when a direction is not known)."""
        try:
            u = self._direction(record)
            cos = {}
            for c in queue:
                other = self._units.get(c.unit_id)
                if other is None:
                    raise DataError(f"unit {c.unit_id} is not in the run's records")
                cos[c.unit_id] = float(self._direction(other) @ u)
        except (ConfigError, DataError) as e:
            return queue, {}, f"random (no output direction: {e})"
        return sorted(queue, key=lambda c: -cos[c.unit_id]), cos, "neighbours"

    async def _search(self, record: NeuronRecord, rng: random.Random, threshold: float) -> Found:
        pool = await asyncio.to_thread(self.pool)
        queue = candidates_for(record, pool, rng)
        cos: dict[str, float] = {}
        order = "random"
        if self.order == "neighbours" and queue:
            queue, cos, order = await asyncio.to_thread(self.neighbours, record, queue)
        queue = queue[: SEARCH_FACTOR * self.n]
        excerpts: list[Excerpt] = []
        anchors: dict[str, int] = {}
        rejected: list[str] = []
        sources: list[str] = []  # the other unit of each negative
        probed = 0
        while queue and len(excerpts) < self.n:
            batch, queue = queue[: self.n], queue[self.n :]
            got = await self.probe().activations_async(record, [c.text for c in batch])
            probed += len(batch)
            for c, a in zip(batch, got, strict=True):
                if len(excerpts) >= self.n:
                    break
                if max(a.activations) > threshold:
                    rejected.append(c.unit_id)
                    continue
                x = _excerpt(c, list(a.tokens), list(a.activations))
                excerpts.append(x)
                sources.append(c.unit_id)
                anchors[x.excerpt_id] = anchor_in(a.tokens, c)
        details = {
            "n_other_unit_negatives": len(excerpts),
            "n_other_probed": probed,
            "n_other_rejected": len(rejected),
            "other_units": [x.excerpt_id for x in excerpts],
            "other_order": order,
        }
        if cos:
            details["other_cosines"] = [round(cos[u], 4) for u in sources]
        return Found(excerpts, anchors, details)


def _excerpt(c: Candidate, tokens: list[str], activations: list[float]) -> Excerpt:
    # The id names the other unit and its excerpt, so a report can show where it came from.
    return Excerpt(
        f"{KIND}:{c.unit_id}:{c.excerpt_id}",
        KIND,
        "test",
        ActivationRecord(tokens=tokens, activations=activations),
    )


__all__ = ["Candidate", "OtherUnitNegatives", "anchor_in", "candidates_for", "pool_from"]
