"""Matching simulation: no prompt to answer, two readouts of a small local model.

Prompt-based simulation (ask the model to write an activation per token) is noise with a
135M model: the explanation barely moves its per-token answers (bench/README.md). This
strategy reads the model instead, for every token of the excerpts:

1. *Representation match*: the cosine between the token's hidden state (layer 2, in
   context) and the mean hidden state of the explanation text, both centred on the mean
   token state of the excerpts being simulated (hidden states share a large common
   direction that would otherwise dominate every cosine). Z-scored over all tokens.
2. *Priming*: how much more likely the explanation makes the token as an example, i.e.
   log P(token | "Examples of E: \"" and two similar templates) minus the same for the
   generic explanation "nothing in particular", floored at 0 (only positive evidence)
   and added on its natural scale (nats, times `prime_weight`), so a description that
   names concrete tokens ("commas", "the word self") speaks loudly and a relational one
   ("text inside brackets") leaves the representation match in charge.

The sum is rescaled to 0..scale_max (correlation-based scoring is blind to that).
Deterministic, batched, `torch.inference_mode`; ~1 s a unit on 2 CPU cores.

A study, not a shipped simulator. Status (bench/discrimination.py, SmolLM2-135M, builtin suite): chosen on the dev half,
where it ranks the true explanation first on 75% of units with mean margin +0.113
[+0.029, +0.203]; on the test half, measured once, 28% (chance 25%), margin -0.006
[-0.12, +0.10]. The dev figure did not generalise: it does NOT meet the check's bar and
should not be trusted as a simulator on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from neuroscribe.llm.local import LocalModel
from neuroscribe.schema import Usage
from neuroscribe.simulator.base import SimulatedExcerpt

MATCHING_VERSION = "matching-v1"
GENERIC = "nothing in particular"
PRIME_TEMPLATES = ('Examples of {e}: "', "Here is a list of {e}:\n1.", "{e}, for example")


class _Stop(Exception):
    """Raised by a forward hook once the wanted layer has run (the rest is not needed)."""


class MatchingSimulator:
    """Simulate by representation match plus priming on a loaded local causal LM.

    `model` is what `load_local_model` returns. `layer` counts decoder layers (2: the
    state after the second one, `hidden_states[2]` in transformers' terms); only those
    layers run for the excerpts.
    """

    strategy = "matching"

    def __init__(
        self,
        model: LocalModel,
        *,
        spec: str = "hf:embedded",
        layer: int = 2,
        prime_weight: float = 0.15,
        scale_max: int = 10,
        batch_size: int = 16,
    ) -> None:
        if layer < 1:
            raise ValueError("layer counts decoder layers and starts at 1")
        self.loaded = model
        self.spec = spec
        self.prompt_version = MATCHING_VERSION
        self.layer = layer
        self.prime_weight = prime_weight
        self.scale_max = scale_max
        self.batch_size = batch_size
        # Every explanation of a unit is simulated on the same excerpts: their states
        # and per-explanation priming rows are computed once (bounded memos).
        self._states: OrderedDict[tuple[tuple[str, ...], ...], list[np.ndarray]] = OrderedDict()
        self._prime: OrderedDict[str, Any] = OrderedDict()
        self._copy_ids: dict[str, list[int]] = {}

    async def simulate(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        # Torch work blocks; run it in a worker thread under the model's lock, as the
        # other local strategies do.
        return await asyncio.to_thread(self.simulate_sync, explanation, excerpts)

    # -- the computation -----------------------------------------------------------------

    def simulate_sync(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        if not excerpts:
            return []
        with self.loaded.lock:
            states, excerpt_tokens = self._excerpt_states(excerpts)
            expl, expl_tokens = self._explanation_state(explanation)
            prime, prime_tokens = self._prime_logprobs(explanation)
            generic, generic_tokens = self._prime_logprobs(GENERIC)
        match = _centred_cosine(states, expl)
        match = _zscore(match)
        boost = [
            self.prime_weight * np.maximum(self._prime_values(prime, generic, ex), 0.0)
            for ex in excerpts
        ]
        total = [m + b for m, b in zip(match, boost, strict=True)]
        scaled = _rescale(total, self.scale_max)
        shared = expl_tokens + prime_tokens + generic_tokens
        out = []
        for k, values in enumerate(scaled):
            usage = Usage(
                prompt_tokens=excerpt_tokens[k] + (shared if k == 0 else 0),
                requests=1 if k == 0 else 0,
            )
            out.append(
                SimulatedExcerpt(
                    expected=[float(v) for v in values],
                    distributions=None,
                    scale_max=self.scale_max,
                    usage=usage,
                )
            )
        return out

    def _excerpt_states(
        self, excerpts: Sequence[Sequence[str]]
    ) -> tuple[list[np.ndarray], list[int]]:
        """Layer states at each excerpt token (its last id), and ids computed per excerpt
        (0 when they came from the memo)."""
        key = tuple(tuple(e) for e in excerpts)
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key], [0] * len(excerpts)
        pieces = [[self._ids(t) for t in ex] for ex in excerpts]
        seqs = [[i for p in ps for i in p] for ps in pieces]
        hidden = self._layer_states(seqs)
        states = []
        for ps, h in zip(pieces, hidden, strict=True):
            ends = np.cumsum([len(p) for p in ps]) - 1
            states.append(h[ends])
        self._states[key] = states
        while len(self._states) > 64:
            self._states.popitem(last=False)
        return states, [len(s) for s in seqs]

    def _ids(self, token: str) -> list[int]:
        """The model's ids of one excerpt token (a token of another model may be several)."""
        tok = self.loaded.tokenizer
        ids = tok(token, add_special_tokens=False)["input_ids"]
        return ids or tok(" ", add_special_tokens=False)["input_ids"]

    def _explanation_state(self, explanation: str) -> tuple[np.ndarray, int]:
        ids = self._ids(" " + explanation)
        return self._layer_states([ids])[0].mean(axis=0), len(ids)

    def _layer_states(self, seqs: Sequence[list[int]]) -> list[np.ndarray]:
        """The states after `self.layer` decoder layers, per sequence (right-padded
        batches; the pads sit after every real id, so causal attention never sees them)."""
        import torch

        model = self.loaded.model
        device = self.loaded.device
        layers = model.base_model.layers
        if self.layer > len(layers):
            raise ValueError(f"the model has {len(layers)} layers, not {self.layer}")
        captured: list[Any] = []

        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        out: list[np.ndarray] = []
        handle = layers[self.layer - 1].register_forward_hook(hook)
        try:
            with torch.inference_mode():
                for start in range(0, len(seqs), self.batch_size):
                    chunk = seqs[start : start + self.batch_size]
                    width = max(len(s) for s in chunk)
                    ids = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
                    for j, s in enumerate(chunk):
                        ids[j, : len(s)] = torch.tensor(s, device=device)
                        mask[j, : len(s)] = 1
                    captured.clear()
                    # The hook stops the pass once the wanted layer has run.
                    with contextlib.suppress(_Stop):
                        model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
                    h = captured[0].float().cpu().numpy()
                    out.extend(h[j, : len(s)] for j, s in enumerate(chunk))
        finally:
            handle.remove()
        return out

    def _prime_logprobs(self, explanation: str) -> tuple[Any, int]:
        """Next-token log-probabilities after each priming template, [templates, vocab]
        (memoised; the generic explanation's row is computed once per simulator)."""
        if explanation in self._prime:
            self._prime.move_to_end(explanation)
            return self._prime[explanation], 0
        import torch

        model = self.loaded.model
        device = self.loaded.device
        tok = self.loaded.tokenizer
        prompts = [
            tok(t.format(e=explanation), add_special_tokens=False)["input_ids"]
            for t in PRIME_TEMPLATES
        ]
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for j, p in enumerate(prompts):
            # Left padding: every prompt's last id sits in the last column.
            ids[j, width - len(p) :] = torch.tensor(p, device=device)
            mask[j, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = model.base_model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state[:, -1]
            logits = model.get_output_embeddings()(hidden).float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
        self._prime[explanation] = logp
        while len(self._prime) > 256:
            self._prime.popitem(last=False)
        return logp, sum(len(p) for p in prompts)

    def _prime_values(self, prime: Any, generic: Any, tokens: Sequence[str]) -> np.ndarray:
        """Per token: mean over templates of log P(token as an example), explanation minus
        generic. A token's probability is summed over the ids it could start with (as
        written, without its leading space, with one)."""
        import torch

        values = []
        for t in tokens:
            ids = self._token_start_ids(t)
            own = torch.logsumexp(prime[:, ids], dim=1).mean()
            base = torch.logsumexp(generic[:, ids], dim=1).mean()
            values.append(float(own - base))
        return np.asarray(values, dtype=np.float64)

    def _token_start_ids(self, token: str) -> list[int]:
        if token not in self._copy_ids:
            tok = self.loaded.tokenizer
            forms = {token, token.strip() or token, " " + token.strip()}
            firsts = set()
            for f in forms:
                ids = tok(f, add_special_tokens=False)["input_ids"]
                if ids:
                    firsts.add(ids[0])
            self._copy_ids[token] = sorted(firsts)
        return self._copy_ids[token]


# -- pure helpers ------------------------------------------------------------------------


def _centred_cosine(states: Sequence[np.ndarray], expl: np.ndarray) -> list[np.ndarray]:
    """Cosine of each token state to the explanation state, both centred on the mean
    token state of all the excerpts."""
    mu = np.concatenate(states).mean(axis=0)
    e = expl - mu
    e = e / (np.linalg.norm(e) + 1e-8)
    out = []
    for s in states:
        c = s - mu
        out.append((c / (np.linalg.norm(c, axis=-1, keepdims=True) + 1e-8)) @ e)
    return out


def _zscore(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    flat = np.concatenate(values)
    sd = float(flat.std())
    return [(v - flat.mean()) / (sd if sd > 1e-12 else 1.0) for v in values]


def _rescale(values: Sequence[np.ndarray], scale_max: int) -> list[np.ndarray]:
    """Affine map of all excerpts' values together onto 0..scale_max."""
    flat = np.concatenate(values)
    lo, hi = float(flat.min()), float(flat.max())
    span = hi - lo
    if span <= 1e-12:
        return [np.zeros_like(v) for v in values]
    return [(v - lo) / span * scale_max for v in values]
