"""Streaming collection of per-unit statistics and excerpts, in memory that does not grow.

For each group of units (one hook point) the collector keeps, on the model's device:

- the top `k` excerpts by maximum activation: values [U, k], excerpt ids [U, k] and the
  per-token activations [U, k, L], ordered by (value descending, excerpt id ascending);
  each batch is merged in with a stable sort, so ties keep the earlier excerpt and the
  result equals a sort of the whole corpus;
- running moments in float64 (count, mean and central sums M2, M3, M4, merged batch by
  batch with the pairwise update of Chan et al. / Pébay), the count of non-zero values
  and the maximum;
- the per-excerpt maximum of every unit for a *pool* of excerpts shared by all groups: a
  bottom-k priority sample. Every excerpt gets a pseudo-random 64-bit priority that is a
  function of (seed, excerpt id) alone (`excerpt_priority`), and the pool holds the
  `pool_size` excerpts with the smallest priorities: a uniform sample without replacement
  that does not depend on the order in which excerpts arrive.

Excerpt ids are positions in the whole corpus stream, so collectors that saw disjoint
parts of one stream (shards on several workers) combine exactly with `merge`: the same
top excerpts in the same order, the same pool, and moments equal up to float64 rounding
(the pairwise update is exact algebra; only the order of the additions differs).

The random sample and the per-quantile samples of each unit are drawn from the pool at
the end (`select_from_pool`), in an order fixed by excerpt id, so nothing proportional to
the corpus is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neuroscribe.errors import DataError

# Written into checkpoints: a checkpoint of another sampler (the older seeded reservoir)
# cannot be continued with this one.
POOL_SAMPLER = "bottom-k/splitmix64"

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters consecutive inputs."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def excerpt_priority(seed: int, ids: np.ndarray) -> np.ndarray:
    """The pool priority (uint64) of each excerpt id: splitmix64's output number id+1
    for a state derived from `seed`.

    `id -> base + (id + 1)·golden` is injective mod 2^64 (the constant is odd) and the
    finaliser is a bijection, so distinct ids never tie: the bottom-k set is unique.
    """
    with np.errstate(over="ignore"):
        base = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        z = base + (np.asarray(ids, dtype=np.int64).astype(np.uint64) + _U64(1)) * _GOLDEN
        return _mix64(z)


def merge_moments(
    na: int, a: tuple[torch.Tensor, ...], nb: int, b: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """(mean, M2, M3, M4) of the union of two disjoint sets of values, from each set's
    count, mean and central sums (Chan et al. 1979; Pébay 2008), in float64."""
    if na == 0:
        return b
    if nb == 0:
        return a
    mean_a, m2a, m3a, m4a = a
    mean_b, m2b, m3b, m4b = b
    n = na + nb
    delta = mean_b - mean_a
    dn = delta / n
    m2 = m2a + m2b + delta * dn * na * nb
    m3 = m3a + m3b + delta * dn * dn * na * nb * (na - nb) + 3 * dn * (na * m2b - nb * m2a)
    m4 = (
        m4a
        + m4b
        + delta * dn * dn * dn * na * nb * (na * na - na * nb + nb * nb)
        + 6 * dn * dn * (na * na * m2b + nb * nb * m2a)
        + 4 * dn * (na * m3b - nb * m3a)
    )
    return mean_a + dn * nb, m2, m3, m4


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean, M2, M3, M4) of a batch of values x [N, U] per column, in float64: the
    `b` argument of `merge_moments`."""
    x = x.double()
    mean = x.mean(dim=0)
    d = x - mean
    d2 = d * d
    return mean, d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0)


def merge_top(
    vals: torch.Tensor, ids: torch.Tensor, acts: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best candidates per unit by (value descending, excerpt id ascending).

    vals, ids [U, C] (id -1 = empty slot, value -inf), acts [U, C, L]. Two stable sorts
    make the order a total one that does not depend on where each candidate came from.
    """
    key = torch.where(ids < 0, torch.iinfo(torch.long).max, ids)
    by_id = torch.sort(key, dim=1, stable=True).indices
    by_val = torch.sort(vals.gather(1, by_id), dim=1, descending=True, stable=True).indices
    order = by_id.gather(1, by_val[:, :k])
    u, length = acts.shape[0], acts.shape[2]
    return (
        vals.gather(1, order),
        ids.gather(1, order),
        acts.gather(1, order[:, :, None].expand(u, order.shape[1], length)),
    )


@dataclass
class GroupState:
    top_vals: torch.Tensor  # [U, k] float32, -inf where empty
    top_ids: torch.Tensor  # [U, k] int64 excerpt ids, -1 where empty
    top_acts: torch.Tensor  # [U, k, L] float32 (unit-major: a unit's rows are contiguous)
    mean: torch.Tensor  # [U] float64
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor
    nonzero: torch.Tensor  # [U] int64
    vmax: torch.Tensor  # [U] float32
    pool_max: torch.Tensor  # [pool_size, U] float32
    pool_acts: torch.Tensor | None = None  # [pool_size, L, U] when `keep_pool_acts`


class Collector:
    """Merges batches of activations into per-unit summaries."""

    def __init__(
        self,
        widths: list[int],
        *,
        length: int,
        n_top: int,
        pool_size: int,
        seed: int,
        device: torch.device | str = "cpu",
        keep_pool_acts: bool = True,
    ):
        self.length = length
        self.n_top = n_top
        self.pool_size = pool_size
        self.seed = seed
        self.device = torch.device(device)
        # Keeping the pool's per-token activations costs pool_size x L x U floats but
        # saves a second forward pass over the pool at the end.
        self.keep_pool_acts = keep_pool_acts
        self.n_excerpts = 0  # excerpts seen so far (= next excerpt id of a single stream)
        self.n_tokens = 0  # recorded token positions so far
        self.pool_tokens: list[np.ndarray] = []  # token ids (int32) per pool slot
        self.pool_ids = np.zeros(0, dtype=np.int64)  # excerpt id per pool slot
        self._pool_prio = np.zeros(0, dtype=np.uint64)  # its priority
        self.tokens: dict[int, np.ndarray] = {}  # token ids of excerpts in some top-k
        self._prune_at = 4096
        self.groups = [self._empty(u) for u in widths]

    def _empty(self, u: int) -> GroupState:
        d, k = self.device, self.n_top
        f64 = dict(dtype=torch.float64, device=d)
        return GroupState(
            top_vals=torch.full((u, k), -torch.inf, device=d),
            top_ids=torch.full((u, k), -1, dtype=torch.long, device=d),
            top_acts=torch.zeros((u, k, self.length), device=d),
            mean=torch.zeros(u, **f64),
            m2=torch.zeros(u, **f64),
            m3=torch.zeros(u, **f64),
            m4=torch.zeros(u, **f64),
            nonzero=torch.zeros(u, dtype=torch.long, device=d),
            vmax=torch.full((u,), -torch.inf, device=d),
            pool_max=torch.zeros((self.pool_size, u), device=d),
            pool_acts=torch.zeros((self.pool_size, self.length, u), device=d)
            if self.keep_pool_acts
            else None,
        )

    # ---------------------------------------------------------------- streaming
    def update(
        self,
        acts: list[torch.Tensor],
        valid: torch.Tensor,
        windows: list[list[int]],
        *,
        first_id: int | None = None,
    ) -> None:
        """Merge one batch: acts[g] is [B, L, U_g]; valid [B, L] marks recorded positions.

        The batch's excerpts have ids first_id, first_id + 1, ... (default: the next ids
        of a single stream). A shard passes the global ids; they must increase from one
        call to the next, so that a stable sort breaks ties by id.
        """
        valid = valid.to(self.device)
        b = valid.shape[0]
        start = self.n_excerpts if first_id is None else first_id
        ids = torch.arange(start, start + b, device=self.device)
        slots = self._pool_slots(np.arange(start, start + b, dtype=np.int64))
        n_valid = int(valid.sum())
        full = n_valid == valid.numel()  # no padding: skip the masking copies
        for g, a in zip(self.groups, acts, strict=True):
            a = a.to(self.device)
            if full:
                bmax = a.amax(dim=1)  # [B, U]
                values = a.reshape(-1, a.shape[-1])
            else:
                bmax = a.masked_fill(~valid[:, :, None], -torch.inf).amax(dim=1)
                values = a[valid]
                a = a.masked_fill(~valid[:, :, None], 0.0)
            self._merge_top(g, a, bmax, ids)
            self._merge_moments(g, values)
            if slots:
                pos_t = torch.tensor(list(slots), device=self.device)
                slot_t = torch.tensor(list(slots.values()), device=self.device)
                g.pool_max[slot_t] = bmax[pos_t]
                if g.pool_acts is not None:
                    g.pool_acts[slot_t] = a[pos_t]
        self._store_pool_tokens({slot: windows[pos] for pos, slot in slots.items()})
        for pos, w in enumerate(windows):
            self.tokens[start + pos] = np.asarray(w, dtype=np.int32)
        self.n_excerpts += b
        self.n_tokens += n_valid
        self._prune_tokens()

    def _pool_slots(self, ids: np.ndarray) -> dict[int, int]:
        """Batch position -> pool slot for the excerpts `ids` that enter the pool."""
        prio = excerpt_priority(self.seed, ids)
        cand = np.arange(len(ids))
        if len(self.pool_ids) == self.pool_size:  # full: only a smaller priority enters
            cand = cand[prio < self._pool_prio.max()]
            if cand.size == 0:
                return {}
        entering, slots = self._bottom_k(prio[cand])
        pos = cand[entering]
        self._place(slots, ids[pos], prio[pos])
        return dict(zip(pos.tolist(), slots.tolist(), strict=True))

    def _bottom_k(self, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the priorities `new` join the pool, and the slots they take.

        The pool keeps the `pool_size` smallest priorities of all it was offered. Returns
        (indices into `new` that enter, their slots): first the slots of the excerpts
        they push out, in slot order, then free slots after the last used one.
        """
        n, cap = len(self._pool_prio), self.pool_size
        both = np.concatenate([self._pool_prio, new])
        if len(both) > cap:
            kth = np.partition(both, cap - 1)[cap - 1]
            keep = both <= kth  # exactly `cap` entries: priorities never tie
        else:
            keep = np.ones(len(both), dtype=bool)
        entering = np.flatnonzero(keep[n:])
        freed = np.flatnonzero(~keep[:n])
        fresh = np.arange(n, n + len(entering) - len(freed))
        return entering, np.concatenate([freed, fresh]).astype(np.int64)

    def _place(self, slots: np.ndarray, ids: np.ndarray, prio: np.ndarray) -> None:
        grow = (int(slots.max()) + 1 if slots.size else 0) - len(self.pool_ids)
        if grow > 0:
            self.pool_ids = np.concatenate([self.pool_ids, np.zeros(grow, dtype=np.int64)])
            self._pool_prio = np.concatenate([self._pool_prio, np.zeros(grow, dtype=np.uint64)])
        self.pool_ids[slots] = ids
        self._pool_prio[slots] = prio

    def _store_pool_tokens(self, by_slot: dict[int, list[int] | np.ndarray]) -> None:
        for slot in sorted(by_slot):  # new slots come in order, after the last one
            w = np.asarray(by_slot[slot], dtype=np.int32)
            if slot == len(self.pool_tokens):
                self.pool_tokens.append(w)
            else:
                self.pool_tokens[slot] = w

    def _merge_top(
        self, g: GroupState, a: torch.Tensor, bmax: torch.Tensor, ids: torch.Tensor
    ) -> None:
        # Only units whose k-th best was beaten need the (costlier) gather of activations.
        bmax_t = bmax.T  # [U, B]
        improved = (bmax_t > g.top_vals[:, -1:]).any(dim=1)
        n_improved = int(improved.sum())
        if n_improved == 0:
            return
        k, u = self.n_top, improved.numel()
        a_t = a.permute(2, 0, 1)  # [U, B, L] view
        if n_improved == u:
            cols = None
            vals, tids, tacts, new_acts = g.top_vals, g.top_ids, g.top_acts, a_t
            new_vals = bmax_t
        else:
            cols = improved.nonzero().squeeze(1)
            vals, tids = g.top_vals[cols], g.top_ids[cols]
            tacts, new_acts, new_vals = g.top_acts[cols], a_t[cols], bmax_t[cols]
        c = vals.shape[0]
        cand_vals = torch.cat([vals, new_vals], dim=1)  # [C, k+B]
        cand_ids = torch.cat([tids, ids[None, :].expand(c, -1)], dim=1)
        # Stable: on ties the earlier excerpt (already in the top, or earlier in the batch)
        # wins, i.e. the lower id: ids only grow along the stream.
        order = torch.sort(cand_vals, dim=1, descending=True, stable=True).indices[:, :k]
        cand_acts = torch.cat([tacts, new_acts], dim=1)  # [C, k+B, L]
        top_vals = cand_vals.gather(1, order)
        top_ids = cand_ids.gather(1, order)
        top_acts = cand_acts.gather(1, order[:, :, None].expand(c, k, self.length))
        if cols is None:
            g.top_vals, g.top_ids, g.top_acts = top_vals, top_ids, top_acts
        else:
            g.top_vals[cols], g.top_ids[cols], g.top_acts[cols] = top_vals, top_ids, top_acts

    def _merge_moments(self, g: GroupState, x: torch.Tensor) -> None:
        """Pairwise merge of (n, mean, M2, M3, M4) with those of the batch values x [N, U]."""
        nb = x.shape[0]
        if nb == 0:
            return
        g.nonzero += (x != 0).sum(dim=0)
        g.vmax = torch.maximum(g.vmax, x.amax(dim=0))
        # Every group sees the same positions; n_tokens moves on after all groups.
        g.mean, g.m2, g.m3, g.m4 = merge_moments(
            self.n_tokens, (g.mean, g.m2, g.m3, g.m4), nb, batch_moments(x)
        )

    def _prune_tokens(self) -> None:
        """Forget token ids of excerpts that left every top-k (keeps memory bounded).

        Pruning runs when the store has doubled since the last pruning, so its cost is
        amortised and the store never exceeds twice the excerpts still in some top-k.
        """
        if len(self.tokens) < self._prune_at:
            return
        self._prune_now()
        self._prune_at = max(4096, 2 * len(self.tokens))

    def _prune_now(self) -> None:
        keep: set[int] = set()
        for g in self.groups:
            keep.update(torch.unique(g.top_ids).tolist())
        self.tokens = {i: t for i, t in self.tokens.items() if i in keep}

    # ---------------------------------------------------------------- merging shards
    def merge(self, other: Collector) -> None:
        """Fold in a collector that saw a disjoint part of the same excerpt stream.

        Top-k and pool are exact (the same as one pass over both parts, whatever the
        split and the order of merging); the moments differ from one pass only by
        float64 rounding (relative ~1e-15 for mean and variance; skewness and kurtosis
        lose more only where M3 or M4 nearly cancel).
        """
        mine = (self.length, self.n_top, self.pool_size, self.seed, self.keep_pool_acts)
        theirs = (other.length, other.n_top, other.pool_size, other.seed, other.keep_pool_acts)
        widths = [g.mean.numel() for g in self.groups]
        if mine != theirs or widths != [g.mean.numel() for g in other.groups]:
            raise ValueError(f"cannot merge collectors of different recordings: {mine} vs {theirs}")
        if np.intersect1d(self.pool_ids, other.pool_ids).size:
            raise ValueError("cannot merge collectors that saw the same excerpts")
        entering, slots = self._bottom_k(other._pool_prio)
        for g, h in zip(self.groups, other.groups, strict=True):
            h_dev = {k: None if v is None else v.to(self.device) for k, v in vars(h).items()}
            g.top_vals, g.top_ids, g.top_acts = merge_top(
                torch.cat([g.top_vals, h_dev["top_vals"]], dim=1),
                torch.cat([g.top_ids, h_dev["top_ids"]], dim=1),
                torch.cat([g.top_acts, h_dev["top_acts"]], dim=1),
                self.n_top,
            )
            g.mean, g.m2, g.m3, g.m4 = merge_moments(
                self.n_tokens,
                (g.mean, g.m2, g.m3, g.m4),
                other.n_tokens,
                (h_dev["mean"], h_dev["m2"], h_dev["m3"], h_dev["m4"]),
            )
            g.nonzero = g.nonzero + h_dev["nonzero"]
            g.vmax = torch.maximum(g.vmax, h_dev["vmax"])
            if entering.size:
                src = torch.as_tensor(entering, device=self.device)
                dst = torch.as_tensor(slots, device=self.device)
                g.pool_max[dst] = h_dev["pool_max"][src]
                if g.pool_acts is not None:
                    g.pool_acts[dst] = h_dev["pool_acts"][src]
        self._place(slots, other.pool_ids[entering], other._pool_prio[entering])
        self._store_pool_tokens(
            {int(s): other.pool_tokens[int(e)] for s, e in zip(slots, entering, strict=True)}
        )
        self.tokens.update(other.tokens)
        self.n_excerpts += other.n_excerpts
        self.n_tokens += other.n_tokens
        self._prune_now()

    # ---------------------------------------------------------------- results
    def statistics(self, group: int) -> dict[str, np.ndarray]:
        """Per-unit statistics over every recorded token: population moments (ddof 0),
        skewness m3/m2^1.5 and excess kurtosis m4/m2^2 - 3 (NaN for a constant unit)."""
        g, n = self.groups[group], max(self.n_tokens, 1)
        m2 = (g.m2 / n).cpu().numpy()
        m3 = (g.m3 / n).cpu().numpy()
        m4 = (g.m4 / n).cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            const = m2 <= 1e-300
            skew = np.where(const, np.nan, m3 / np.power(np.where(const, 1, m2), 1.5))
            kurt = np.where(const, np.nan, m4 / np.where(const, 1, m2) ** 2 - 3.0)
        return {
            "mean": g.mean.cpu().numpy(),
            "variance": m2,
            "skewness": skew,
            "kurtosis": kurt,
            "max_activation": g.vmax.double().cpu().numpy(),
            "frac_nonzero": (g.nonzero.double() / n).cpu().numpy(),
        }

    def top(self, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values [U, k], excerpt ids [U, k], activations [U, k, L]), strongest first."""
        g = self.groups[group]
        return g.top_vals, g.top_ids, g.top_acts

    def select_from_pool(
        self, group: int, *, n_random: int, n_quantiles: int, per_quantile: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choose each unit's random and per-quantile excerpts among the pool.

        Returns random slots [U, n_random], quantile slots [U, n_quantiles, per_quantile]
        (-1 where a bin has fewer excerpts) and quantile boundaries [U, n_quantiles + 1]
        of the per-excerpt maximum. Each unit draws its own uniform permutation of the
        pool taken in excerpt-id order, so the choice does not depend on which slot an
        excerpt happened to land in (that depends on the arrival order).
        """
        g = self.groups[group]
        r = len(self.pool_tokens)
        u = g.pool_max.shape[1]
        canon = torch.from_numpy(np.argsort(self.pool_ids[:r], kind="stable"))  # pos -> slot
        gen = torch.Generator().manual_seed(seed * 1_000_003 + group)
        perm = torch.argsort(torch.rand(u, r, generator=gen), dim=1)  # [U, R] positions
        rand = canon[perm[:, : min(n_random, r)]]
        if n_quantiles <= 0 or r == 0:
            return rand, torch.full((u, 0, per_quantile), -1), torch.zeros((u, 0))
        maxes = g.pool_max[:r].cpu()[canon].T.double().contiguous()  # [U, R] in id order
        levels = torch.linspace(0, 1, n_quantiles + 1, dtype=torch.float64)
        bounds = torch.quantile(maxes, levels, dim=1).T.contiguous()  # [U, Q+1]
        bins = torch.searchsorted(bounds, maxes, right=True) - 1
        bins = bins.clamp(0, n_quantiles - 1)  # the maximum itself goes into the last bin
        bins_perm = bins.gather(1, perm)
        chosen = torch.full((u, n_quantiles, per_quantile), -1, dtype=torch.long)
        take = min(per_quantile, r)
        for q in range(n_quantiles):
            in_bin = bins_perm == q
            sel = in_bin & (in_bin.long().cumsum(1) <= per_quantile)
            first = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :take]
            slots = canon[perm.gather(1, first)]
            ok = sel.gather(1, first)
            chosen[:, q, :take] = torch.where(ok, slots, torch.full_like(slots, -1))
        return rand, chosen, bounds

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (`load_state_dict`) or merge (`from_state_dict`);
        tensors on the CPU, so a state pickles across processes and machines."""
        self._prune_now()
        return {
            "config": {
                "length": self.length,
                "n_top": self.n_top,
                "pool_size": self.pool_size,
                "seed": self.seed,
                "keep_pool_acts": self.keep_pool_acts,
            },
            "pool_sampler": POOL_SAMPLER,
            "n_excerpts": self.n_excerpts,
            "n_tokens": self.n_tokens,
            "pool_tokens": self.pool_tokens,
            "pool_ids": self.pool_ids.tolist(),
            "tokens": self.tokens,
            "groups": [
                {k: None if v is None else v.cpu() for k, v in vars(g).items()} for g in self.groups
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("pool_sampler") != POOL_SAMPLER:
            raise DataError(
                "checkpoint written by an older neuroscribe (another random-sample pool); "
                "rerun with --restart"
            )
        self.n_excerpts = state["n_excerpts"]
        self.n_tokens = state["n_tokens"]
        self.pool_tokens = list(state["pool_tokens"])
        self.pool_ids = np.asarray(state["pool_ids"], dtype=np.int64)
        self._pool_prio = excerpt_priority(self.seed, self.pool_ids)
        self.tokens = dict(state["tokens"])
        self.groups = [
            GroupState(**{k: None if v is None else v.to(self.device) for k, v in gs.items()})
            for gs in state["groups"]
        ]

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str = "cpu"
    ) -> Collector:
        """A collector holding `state` (e.g. a shard's, to `merge`), on `device`."""
        c = state["config"]
        out = cls(
            [],
            length=c["length"],
            n_top=c["n_top"],
            pool_size=c["pool_size"],
            seed=c["seed"],
            device=device,
            keep_pool_acts=c["keep_pool_acts"],
        )
        out.load_state_dict(state)
        return out
