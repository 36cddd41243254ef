"""Streaming collection of per-unit statistics and excerpts, in memory that does not grow.

For each group of units (one hook point) the collector keeps, on the model's device:

- the top `k` excerpts by maximum activation: values [k, U], excerpt ids [k, U] and the
  per-token activations [k, L, U]; each batch is merged in with a stable sort, so ties
  keep the earlier excerpt and the result equals a sort of the whole corpus;
- running moments in float64 (count, mean and central sums M2, M3, M4, merged batch by
  batch with the pairwise update of Chan et al. / Pébay), the count of non-zero values
  and the maximum;
- the per-excerpt maximum of every unit for a *pool* of excerpts: a uniform reservoir
  sample (Algorithm R, seeded) of at most `pool_size` excerpts shared by all groups.

The random sample and the per-quantile samples of each unit are drawn from the pool at
the end (`select_from_pool`), and their per-token activations are computed again for
just those excerpts, so nothing proportional to the corpus is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
        self.device = torch.device(device)
        # Keeping the pool's per-token activations costs pool_size x L x U floats but
        # saves a second forward pass over the pool at the end.
        self.keep_pool_acts = keep_pool_acts
        self.rng = np.random.default_rng(seed)
        self.n_excerpts = 0  # excerpts seen so far (= next excerpt id)
        self.n_tokens = 0  # recorded token positions so far
        self.pool_tokens: list[np.ndarray] = []  # token ids (int32) per pool slot
        self.pool_ids: list[int] = []  # excerpt id per pool slot
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
        self, acts: list[torch.Tensor], valid: torch.Tensor, windows: list[list[int]]
    ) -> None:
        """Merge one batch: acts[g] is [B, L, U_g]; valid [B, L] marks recorded positions."""
        valid = valid.to(self.device)
        b = valid.shape[0]
        ids = torch.arange(self.n_excerpts, self.n_excerpts + b, device=self.device)
        slots = self._reservoir_slots(b)
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
        for pos, slot in sorted(slots.items(), key=lambda item: item[1]):  # new slots in order
            w = np.asarray(windows[pos], dtype=np.int32)
            if slot == len(self.pool_tokens):
                self.pool_tokens.append(w)
                self.pool_ids.append(self.n_excerpts + pos)
            else:
                self.pool_tokens[slot] = w
                self.pool_ids[slot] = self.n_excerpts + pos
        for pos, w in enumerate(windows):
            self.tokens[self.n_excerpts + pos] = np.asarray(w, dtype=np.int32)
        self.n_excerpts += b
        self.n_tokens += n_valid
        self._prune_tokens()

    def _reservoir_slots(self, b: int) -> dict[int, int]:
        """Batch position -> pool slot, Algorithm R; a later excerpt overwrites an earlier one."""
        out: dict[int, int] = {}
        taken: dict[int, int] = {}
        for pos in range(b):
            i = self.n_excerpts + pos
            if i < self.pool_size:
                slot = i
            else:
                slot = int(self.rng.integers(0, i + 1))
                if slot >= self.pool_size:
                    continue
            if slot in taken:
                del out[taken[slot]]
            out[pos] = slot
            taken[slot] = pos
        return out

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
        # Stable: on ties the earlier excerpt (already in the top, or earlier in the batch) wins.
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
        x = x.double()
        mean_b = x.mean(dim=0)
        d = x - mean_b
        d2 = d * d
        m2b, m3b, m4b = d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0)
        na = self.n_tokens  # every group sees the same positions; n_tokens moves on after
        if na == 0:
            g.mean, g.m2, g.m3, g.m4 = mean_b, m2b, m3b, m4b
            return
        n = na + nb
        delta = mean_b - g.mean
        dn = delta / n
        m2 = g.m2 + m2b + delta * dn * na * nb
        m3 = g.m3 + m3b + delta * dn * dn * na * nb * (na - nb) + 3 * dn * (na * m2b - nb * g.m2)
        m4 = (
            g.m4
            + m4b
            + delta * dn * dn * dn * na * nb * (na * na - na * nb + nb * nb)
            + 6 * dn * dn * (na * na * m2b + nb * nb * g.m2)
            + 4 * dn * (na * m3b - nb * g.m3)
        )
        g.mean = g.mean + dn * nb
        g.m2, g.m3, g.m4 = m2, m3, m4

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
        of the per-excerpt maximum. Each unit draws its own uniform permutation of the pool.
        """
        g = self.groups[group]
        r = len(self.pool_tokens)
        u = g.pool_max.shape[1]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + group)
        perm = torch.argsort(torch.rand(u, r, generator=gen), dim=1)  # [U, R]
        rand = perm[:, : min(n_random, r)]
        if n_quantiles <= 0 or r == 0:
            return rand, torch.full((u, 0, per_quantile), -1), torch.zeros((u, 0))
        maxes = g.pool_max[:r].T.double().cpu().contiguous()  # [U, R]
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
            slots = perm.gather(1, first)
            ok = sel.gather(1, first)
            chosen[:, q, :take] = torch.where(ok, slots, torch.full_like(slots, -1))
        return rand, chosen, bounds

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        self._prune_now()
        return {
            "n_excerpts": self.n_excerpts,
            "n_tokens": self.n_tokens,
            "pool_tokens": self.pool_tokens,
            "pool_ids": self.pool_ids,
            "tokens": self.tokens,
            "rng": self.rng.bit_generator.state,
            "groups": [
                {k: None if v is None else v.cpu() for k, v in vars(g).items()} for g in self.groups
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_excerpts = state["n_excerpts"]
        self.n_tokens = state["n_tokens"]
        self.pool_tokens = state["pool_tokens"]
        self.pool_ids = state["pool_ids"]
        self.tokens = state["tokens"]
        self.rng.bit_generator.state = state["rng"]
        self.groups = [
            GroupState(**{k: None if v is None else v.to(self.device) for k, v in gs.items()})
            for gs in state["groups"]
        ]
