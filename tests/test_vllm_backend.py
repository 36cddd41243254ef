"""The vLLM backends: `vllm:<model>` (a server, `prompt_logprobs`) and `vllm-local:` (engine).

No vLLM here (no GPU): the server is an `httpx.MockTransport` answering in vLLM's
shape, and the engine a stand-in `vllm` module whose outputs have vLLM's attribute
names. Both are built from the same per-position numbers as an echo server's answer,
so the simulation through vLLM must give exactly the echo path's activations.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import types
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from neuroscribe.errors import ConfigError, LLMError, OutputError
from neuroscribe.llm import backend_info, make_llm, unwrap
from neuroscribe.llm.fake import tokenize
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.llm.openai import OpenAIClient
from neuroscribe.llm.openai.probe import PROBE_PROMPT
from neuroscribe.llm.vllm import (
    VLLM_DEFAULT_URL,
    align_token_texts,
    alignment_shift,
    decode_raw_piece,
    map_prompt_logprobs,
    read_prompt_logprobs,
)
from neuroscribe.simulator import PromptLogprobSimulator, make_simulator

URL = "http://gpu.test/v1"
KEY = "sk-vllm-test-SECRET-91c2"  # distinctive, to grep for leaks
FAST = RetryPolicy(max_attempts=3, base_s=0.001, max_wait_s=1)
EXPLANATION = "the word cat"
EXCERPTS = [["The", " cat", " sat", " on", " the", " mat"], [" cats", " and", " dogs", "!"]]
MISSING = -9.0  # a token outside the top k
MISSING_RANK = 57


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --------------------------------------------------------------------------- the numbers
# One table of "model" numbers serves every format: `dist(tokens, i)` is the top of the
# distribution *for* token i (given the tokens before it).


def dist(tokens: list[str], i: int) -> dict[str, float]:
    if tokens[i] == "unknown" and tokens[i - 1] == "\t":
        # A value slot: a bump over 0..10 whose centre depends on the position.
        centre = (i * 7) % 11
        weights = [math.exp(-((v - centre) ** 2) / 6.0) for v in range(11)]
        total = sum(weights)
        return {str(v): math.log(w / total * 0.9) for v, w in enumerate(weights)}
    return {tokens[i]: -0.05, "zz": -4.0}


def own_logprob(tokens: list[str], i: int) -> tuple[float, int]:
    top = dist(tokens, i)
    ranked = sorted(top, key=lambda t: -top[t])
    if tokens[i] in top:
        return top[tokens[i]], ranked.index(tokens[i]) + 1
    return MISSING, MISSING_RANK


class Vocab:
    """Token text ↔ id, grown on demand (1 is BOS)."""

    BOS = 1

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.texts: dict[int, str] = {self.BOS: ""}

    def id(self, text: str) -> int:
        if text not in self.ids:
            self.ids[text] = len(self.ids) + 100
            self.texts[self.ids[text]] = text
        return self.ids[text]


def spell(text: str, style: str) -> str:
    """A token's `decoded_token` as one vLLM version or another writes it."""
    if style == "alone":  # decoded alone, SentencePiece-like: the leading space is lost
        return text[1:] if text.startswith(" ") else text
    if style == "raw":  # the raw byte-level BPE vocabulary string
        return text.replace(" ", "Ġ").replace("\t", "ĉ").replace("\n", "Ċ")
    return text


def vllm_positions(
    tokens: list[str], vocab: Vocab, k: int, *, style: str = "context", bos: bool = False
) -> tuple[list[int], list[Any]]:
    """`prompt_token_ids` and `prompt_logprobs` as vLLM's server returns them."""
    ids = [vocab.id(t) for t in tokens]
    entries: list[Any] = [None]
    for i in range(1, len(tokens)):
        top = dist(tokens, i)
        lp, rank = own_logprob(tokens, i)
        entry = {
            str(ids[i]): {"logprob": lp, "rank": rank, "decoded_token": spell(tokens[i], style)}
        }
        for r, text in enumerate(sorted(top, key=lambda t: -top[t])[:k], start=1):
            entry[str(vocab.id(text))] = {
                "logprob": top[text],
                "rank": r,
                "decoded_token": spell(text, style),
            }
        entries.append(entry)
    if bos:
        # BOS is token 0 (no entry); the first text token now has a distribution too.
        first = {
            str(ids[0]): {"logprob": -2.5, "rank": 3, "decoded_token": spell(tokens[0], style)}
        }
        return [Vocab.BOS, *ids], [None, first, *entries[1:]]
    return ids, entries


# --------------------------------------------------------------------------- the servers


def models_answer() -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "object": "list",
            "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "vllm"}],
        },
    )


def chat_answer() -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "7"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        },
    )


class VLLMServer:
    """A MockTransport handler answering in vLLM's shape; records request bodies.

    `echo`: "refuse" (400 on echo + logprobs, as recent vLLM) or "serve" (OpenAI echo,
    shift 0). `ids`: whether choices carry `prompt_token_ids`. `spoil(answer)` edits the
    /completions answer of a prompt_logprobs request (malformed-answer tests).
    """

    def __init__(
        self,
        *,
        echo: str = "refuse",
        ids: bool = True,
        style: str = "context",
        bos: bool = False,
        spoil: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.echo, self.ids, self.style, self.bos, self.spoil = echo, ids, style, bos, spoil
        self.vocab = Vocab()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/models"):
            return models_answer()
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(request.headers)
        if path.endswith("/chat/completions"):
            return chat_answer()
        if body.get("echo") and body.get("logprobs") is not None:
            if self.echo == "refuse":
                return httpx.Response(
                    400,
                    json={
                        "object": "error",
                        "message": "echo with logprobs is not supported; use prompt_logprobs",
                        "type": "BadRequestError",
                        "code": 400,
                    },
                )
            return echo_answer(body)
        prompt = body["prompt"]
        tokens = tokenize(prompt)
        choice: dict[str, Any] = {"index": 0, "text": "!", "finish_reason": "length"}
        if body.get("logprobs") is not None:
            choice["logprobs"] = {
                "tokens": ["!"],
                "token_logprobs": [-0.1],
                "top_logprobs": [{"!": -0.1, "?": -2.6}],
                "text_offset": [len(prompt)],
            }
        n_prompt = len(tokens) + self.bos
        if body.get("prompt_logprobs") is not None:
            ids, entries = vllm_positions(
                tokens, self.vocab, body["prompt_logprobs"], style=self.style, bos=self.bos
            )
            choice["prompt_logprobs"] = entries
            if self.ids:
                choice["prompt_token_ids"] = ids
        answer = {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": 1},
        }
        if self.spoil is not None and body.get("prompt_logprobs") is not None:
            self.spoil(answer)
        return httpx.Response(200, content=json.dumps(answer).encode())


def echo_answer(body: dict[str, Any]) -> httpx.Response:
    """The same numbers as an OpenAI echo answer (shift 0, top k, offsets)."""
    prompt = body["prompt"]
    k = body["logprobs"]
    tokens = [*tokenize(prompt), "!"]
    tops: list[Any] = [None]
    lps: list[Any] = [None]
    for i in range(1, len(tokens) - 1):
        top = dist(tokens, i)
        tops.append({t: top[t] for t in sorted(top, key=lambda t: -top[t])[:k]})
        lps.append(own_logprob(tokens, i)[0])
    tops.append({"!": -0.1, "?": -2.6})
    lps.append(-0.1)
    logprobs = {
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": tops,
        "text_offset": [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))],
    }
    return httpx.Response(
        200,
        json={
            "choices": [{"text": prompt + "!", "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": len(tokens) - 1, "completion_tokens": 1},
        },
    )


def on(handler: Any, spec: str = "vllm:m", **kw: Any) -> Any:
    kw.setdefault("retry", FAST)
    return make_llm(spec, base_url=URL, transport=httpx.MockTransport(handler), **kw)


async def simulate(llm: Any) -> list[Any]:
    sim = PromptLogprobSimulator(llm, scale_max=10)
    return await sim.simulate(EXPLANATION, EXCERPTS)


def echo_results() -> list[Any]:
    echo_llm = on(lambda r: echo_answer(json.loads(r.content)), spec="m", echo_shift=0)
    return run(simulate(echo_llm))


# --------------------------------------------------------------------------- the mapping


HAND = [
    None,  # BOS: nothing predicts the first token
    {
        "15": {"logprob": -3.2, "rank": 4, "decoded_token": "Hi"},
        "9": {"logprob": -0.4, "rank": 1, "decoded_token": "The"},
        "11": {"logprob": -1.9, "rank": 2, "decoded_token": "A"},
    },
    {
        "27": {"logprob": -6.0, "rank": 31, "decoded_token": " there"},
        "40": {"logprob": -0.7, "rank": 1, "decoded_token": " world"},
        "41": {"logprob": -1.1, "rank": 2, "decoded_token": "!"},
    },
    {
        "41": {"logprob": -0.2, "rank": 1, "decoded_token": "!"},
        "42": {"logprob": -2.3, "rank": 2, "decoded_token": "."},
    },
]


@pytest.mark.parametrize("ids", [[1, 15, 27, 41], None], ids=["with-ids", "without-ids"])
def test_hand_computed_positions_null_first_and_rank_above_k(ids):
    tokens = map_prompt_logprobs(HAND, prompt="Hi there!", prompt_token_ids=ids, k=2)
    # Entry i is the distribution *for* token i: no shift; BOS has no text of the prompt.
    assert [t.token for t in tokens] == ["", "Hi", " there", "!"]
    assert [t.logprob for t in tokens] == [None, -3.2, -6.0, -0.2]
    assert tokens[0].top_logprobs == {}
    # The prompt's own token at rank 4 / 31 (> k=2) is its logprob, not a top-k entry.
    assert tokens[1].top_logprobs == {"The": -0.4, "A": -1.9}
    assert tokens[2].top_logprobs == {" world": -0.7, "!": -1.1}
    # Within the top k it is listed, as in OpenAI's top_logprobs.
    assert tokens[3].top_logprobs == {"!": -0.2, ".": -2.3}


def test_without_bos_position_zero_is_the_prompts_first_token():
    entries = [None, HAND[2], HAND[3]]
    tokens = map_prompt_logprobs(entries, prompt="Hello there!", k=2)
    assert [t.token for t in tokens] == ["Hello", " there", "!"]
    assert tokens[0].logprob is None and tokens[1].logprob == -6.0


@pytest.mark.parametrize("style", ["context", "alone", "raw"])
def test_token_texts_are_spans_of_the_prompt_in_every_spelling(style):
    prompt = "Cats\tunknown\n dogs and mice"
    tokens = tokenize(prompt)
    vocab = Vocab()
    ids, entries = vllm_positions(tokens, vocab, 3, style=style)
    got = map_prompt_logprobs(entries, prompt=prompt, prompt_token_ids=ids, k=3)
    assert [t.token for t in got] == tokens
    # Alternatives are spelt as text too.
    assert all("Ġ" not in key and "ĉ" not in key for t in got for key in t.top_logprobs)
    # A lone space decoded alone is "" (it says nothing): the spans still make the prompt.
    prompt = "dogs and  mice"
    ids, entries = vllm_positions(tokenize(prompt), vocab, 3, style=style)
    got = map_prompt_logprobs(entries, prompt=prompt, prompt_token_ids=ids, k=3)
    assert "".join(t.token for t in got) == prompt


def test_alignment_of_pieces_that_say_nothing():
    # Pieces of a multi-byte character ("\ufffd", "") take the text between neighbours.
    assert align_token_texts([None, "a", "\ufffd", "", "b"], "aéb") == ["", "a", "é", "", "b"]
    assert align_token_texts([None, "x"], "ab") is None  # cannot be placed
    assert [decode_raw_piece(p) for p in ["Ġcat", "ĉ", "Ċ", "▁the", "<0x09>", "7"]] == [
        " cat",
        "\t",
        "\n",
        " the",
        "\t",
        "7",
    ]


def test_alignment_check_reads_token_ids():
    tokens = tokenize(PROBE_PROMPT)
    ids, entries = vllm_positions(tokens, Vocab(), 5)
    assert alignment_shift(read_prompt_logprobs(entries, ids)) == 0
    # Entries whose most likely token is the *next* one are detected.
    shifted: list[Any] = [None]
    for i in range(1, len(ids)):
        entry = {str(ids[i]): {"logprob": -5.0, "rank": 9}}
        if i + 1 < len(ids) and ids[i + 1] != ids[i]:
            entry[str(ids[i + 1])] = {"logprob": -0.05, "rank": 1}
        shifted.append(entry)
    assert alignment_shift(read_prompt_logprobs(shifted, ids)) == 1


@pytest.mark.parametrize(
    ("entries", "ids", "message"),
    [
        (None, None, "missing: the server ignored the prompt_logprobs request"),
        ([None, HAND[1]], [1, 15, 27], "has 2 entries for 3 prompt tokens"),
        ([HAND[1], HAND[2]], None, r"\[0\] is not null"),
        ([None, {"15": {"logprob": float("nan"), "rank": 1}}], None, "nan, not a log-prob"),
        ([None, {"15": {"logprob": 0.5, "rank": 1}}], None, "0.5, not a log-prob"),
        ([None, HAND[1]], [1, 99], r"no entry for its own token \(id 99\)"),
        ([None, {}], None, r"\[1\] is empty"),
        ([None, {"x": {"logprob": -1.0}}], None, "'x', not a token id"),
    ],
)
def test_malformed_positions_are_output_errors_naming_the_entry(entries, ids, message):
    with pytest.raises(OutputError, match=message):
        map_prompt_logprobs(entries, prompt="Hi there", prompt_token_ids=ids, k=2)


def test_minus_infinity_reads_as_the_servers_clamp():
    entries = [None, {"15": {"logprob": float("-inf"), "rank": 900}}]
    [_, tok] = map_prompt_logprobs(entries, prompt="Hi there", k=2)
    assert tok.logprob == -9999.0


# --------------------------------------------------------------------------- the server


def test_vllm_spec_asks_with_prompt_logprobs_not_echo():
    server = VLLMServer()
    llm = on(server)
    client = unwrap(llm)
    assert isinstance(client, OpenAIClient) and client.model == "m" and llm.spec == "vllm:m"
    prompt = "The cat\tunknown"
    resp = run(llm.complete(prompt, max_tokens=1, temperature=0, logprobs=3, echo=True))
    [body] = server.bodies  # no probe: the style is fixed by the spec
    assert body["prompt_logprobs"] == 3 and body["logprobs"] == 3 and "echo" not in body
    assert body["model"] == "m"
    [c] = resp.choices
    assert c.text == prompt + "!"  # as an echo answer reads
    assert [t.token for t in c.prompt_tokens] == tokenize(prompt)
    slot = c.prompt_tokens[-1]
    assert slot.logprob == MISSING  # "unknown" itself, outside the top 3
    top = dist(tokenize(prompt), len(c.prompt_tokens) - 1)
    assert slot.top_logprobs == {t: v for t, v in sorted(top.items(), key=lambda kv: -kv[1])[:3]}
    assert list(slot.top_logprobs) == ["6", "5", "7"]
    assert [t.token for t in c.tokens] == ["!"]
    # max_tokens=0: only the prompt (one token is generated and dropped).
    resp = run(llm.complete(prompt, max_tokens=0, logprobs=3, echo=True))
    assert resp.choices[0].text == prompt and resp.choices[0].tokens == []


@pytest.mark.parametrize(
    "server",
    [
        VLLMServer(),
        VLLMServer(ids=False),
        VLLMServer(bos=True),
        VLLMServer(style="alone", bos=True),
        VLLMServer(style="raw", ids=False),
    ],
    ids=["ids", "no-ids", "bos", "alone+bos", "raw-no-ids"],
)
def test_simulation_through_vllm_equals_the_echo_path(server):
    expected = echo_results()
    got = run(simulate(on(server)))
    assert [r.expected for r in got] == [r.expected for r in expected]
    assert [r.distributions for r in got] == [r.distributions for r in expected]
    assert all(v is not None for r in got for v in r.expected)
    assert all("echo" not in b for b in server.bodies)


def test_make_simulator_picks_prompt_logprobs_on_a_vllm_server():
    server = VLLMServer()
    llm = on(server)
    sim, record = run(make_simulator(llm))
    assert record["strategy"] == "prompt-logprobs" and isinstance(sim, PromptLogprobSimulator)
    caps = record["capabilities"]
    assert caps["prompt_logprobs"] and caps["prompt_logprobs_style"] == "vllm"
    assert caps["echo_shift"] == 0 and caps["ten_single_token"] is True
    assert record["prompt_logprobs_style"] == "vllm" and not record["echo_logprobs"]
    # The probe never asked with echo; its prompt_logprobs request used the probe prompt.
    assert all("echo" not in b for b in server.bodies)
    assert any(b.get("prompt") == PROBE_PROMPT and b.get("prompt_logprobs") for b in server.bodies)


def test_a_bare_name_on_vllm_falls_back_to_prompt_logprobs_when_echo_is_refused():
    server = VLLMServer(echo="refuse")
    llm = on(server, spec="m")
    caps = run(llm.capabilities())
    assert caps.prompt_logprobs and caps.prompt_logprobs_style == "vllm"
    probe = llm.probe_result
    assert probe["completions"] and not probe["echo_logprobs"] and probe["prompt_logprobs"]
    assert "echo with logprobs is not supported" in probe["errors"]["echo_logprobs"]
    assert "completions" not in probe["errors"]
    n = len(server.bodies)
    run(llm.complete("a\tunknown", max_tokens=1, logprobs=4, echo=True))
    assert server.bodies[n]["prompt_logprobs"] == 4 and "echo" not in server.bodies[n]
    assert run(simulate(llm))[0].expected == echo_results()[0].expected


def test_echo_stays_where_it_works():
    server = VLLMServer(echo="serve")
    llm = on(server, spec="m")
    caps = run(llm.capabilities())
    assert caps.prompt_logprobs and caps.prompt_logprobs_style == "echo"
    assert llm.probe_result["prompt_logprobs"] is True  # recorded, not used
    n = len(server.bodies)
    run(llm.complete("a b", max_tokens=1, logprobs=2, echo=True))
    assert server.bodies[n]["echo"] is True and "prompt_logprobs" not in server.bodies[n]
    # ... unless the style is fixed: vllm:<model> never echoes.
    fixed = on(VLLMServer(echo="serve"), spec="vllm:m")
    assert run(fixed.capabilities()).prompt_logprobs_style == "vllm"


def test_probe_records_an_unusable_prompt_logprobs_answer_and_falls_back():
    server = VLLMServer(spoil=lambda a: a["choices"][0]["prompt_logprobs"].pop())
    llm = on(server, spec="m")
    _, record = run(make_simulator(llm))
    assert record["strategy"] == "json"  # the mock's chat answers carry no logprobs
    assert not record["capabilities"]["prompt_logprobs"]
    assert "entries for" in record["errors"]["prompt_logprobs"]


def test_no_prompt_logprobs_request_where_there_is_no_completions_endpoint():
    paths: list[str] = []

    def chat_only(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/models"):
            return models_answer()
        if request.url.path.endswith("/chat/completions"):
            return chat_answer()
        return httpx.Response(404, json={"error": {"message": "not a completions model"}})

    probe = run(on(chat_only, spec="m").probe())
    assert paths.count("/v1/completions") == 1 and "prompt_logprobs" not in probe["errors"]
    assert probe["prompt_logprobs_style"] is None and not probe["prompt_logprobs"]


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda a: a["choices"][0].pop(key)


def _set_entry(i: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def spoil(a: dict[str, Any]) -> None:
        a["choices"][0]["prompt_logprobs"][i] = value

    return spoil


def _nan(a: dict[str, Any]) -> None:
    entry = a["choices"][0]["prompt_logprobs"][2]
    next(iter(entry.values()))["logprob"] = float("nan")


def _short(a: dict[str, Any]) -> None:
    a["choices"][0]["prompt_logprobs"].pop()


def _usage(a: dict[str, Any]) -> None:
    a["usage"]["prompt_tokens"] += 3


@pytest.mark.parametrize(
    ("spoil", "ids", "message"),
    [
        (_drop("prompt_logprobs"), True, r"choices\[0\]\.prompt_logprobs is missing"),
        (_short, True, r"prompt_logprobs has 4 entries for 5 prompt tokens"),
        (_short, False, r"has 4 entries but the usage counts 5 prompt tokens"),
        (_usage, False, r"has 5 entries but the usage counts 8 prompt tokens"),
        (_nan, True, r"prompt_logprobs\[2\]\['\d+'\]\.logprob is nan"),
        (_set_entry(2, None), True, r"prompt_logprobs\[2\] is None, not a distribution"),
    ],
    ids=["missing", "short-vs-ids", "short-vs-usage", "usage", "nan", "null-entry"],
)
def test_malformed_answers_are_clear_output_errors_without_the_key(spoil, ids, message):
    server = VLLMServer(ids=ids, spoil=spoil)
    # Credentials in the key, in basic auth and in the query: none may show.
    url = f"http://user:{KEY}-pw@gpu.test/v1?api_key={KEY}-q"
    llm = make_llm(
        "vllm:m", base_url=url, api_key=KEY, transport=httpx.MockTransport(server), retry=FAST
    )
    with pytest.raises(OutputError, match=message) as info:
        run(llm.complete("a b c", max_tokens=1, logprobs=2, echo=True))
    err = info.value
    assert len(server.bodies) == 1  # not retried: the same request gets the same answer
    assert "(an unusable vLLM prompt_logprobs answer from http://gpu.test/v1/" in str(err)
    assert err.usage is not None and err.usage.prompt_tokens > 0  # spend still counted
    assert server.headers[0]["authorization"]  # credentials were sent...
    for text in (str(err), err.raw or "", repr(llm)):
        assert KEY not in text  # ...and never shown


def test_server_error_bodies_never_show_the_key():
    def leaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return models_answer()
        said = request.headers["authorization"]
        return httpx.Response(400, json={"message": f"bad request from {said}", "code": 400})

    llm = make_llm(
        "vllm:m", base_url=URL, api_key=KEY, transport=httpx.MockTransport(leaky), retry=FAST
    )
    with pytest.raises(LLMError) as info:
        run(llm.complete("a b", max_tokens=1, logprobs=2, echo=True))
    assert KEY not in str(info.value) and "request rejected (400)" in str(info.value)


def test_vllm_spec_endpoint_defaults_and_registration(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    llm = make_llm("vllm:Qwen/Qwen2.5-1.5B-Instruct")
    assert unwrap(llm).base_url == VLLM_DEFAULT_URL
    assert unwrap(llm).model == "Qwen/Qwen2.5-1.5B-Instruct"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://other.test:9000/v1")
    assert unwrap(make_llm("vllm:m")).base_url == "http://other.test:9000/v1"
    assert unwrap(make_llm("vllm:m", base_url=URL)).base_url == URL  # --base-url wins
    info = backend_info("vllm:m")
    assert info.name == "vllm" and info.endpoint and not info.local and info.needs_pricing
    local = backend_info("vllm-local:some/model")
    assert local.name == "vllm-local" and local.local and not local.endpoint
    with pytest.raises(ConfigError, match="needs a name after it"):
        make_llm("vllm:")
    with pytest.raises(ConfigError, match="prompt_logprobs_style"):
        make_llm("m", base_url=URL, prompt_logprobs_style="telepathy")


# --------------------------------------------------------------------------- the engine


def engine_output(
    tokens: list[str],
    vocab: Vocab,
    params: Any,
    *,
    bos: bool = True,
) -> SimpleNamespace:
    """A `RequestOutput` as vLLM's engine returns it (attribute names and nesting)."""

    def logprob(lp: float, rank: int | None, text: str) -> SimpleNamespace:
        return SimpleNamespace(logprob=lp, rank=rank, decoded_token=text)

    prompt_logprobs = None
    ids = [vocab.id(t) for t in tokens]
    if params.prompt_logprobs is not None:
        ids, entries = vllm_positions(tokens, vocab, params.prompt_logprobs, bos=bos)
        prompt_logprobs = [
            None
            if e is None
            else {
                int(tid): logprob(v["logprob"], v.get("rank"), v.get("decoded_token"))
                for tid, v in e.items()
            }
            for e in entries
        ]
    elif bos:
        ids = [Vocab.BOS, *ids]
    bang = vocab.id("!")
    sample = None
    if params.logprobs is not None:
        sample = [{bang: logprob(-0.1, 1, "!"), vocab.id("?"): logprob(-2.6, 2, "?")}]
    outputs = [
        SimpleNamespace(
            index=j, text="!", token_ids=[bang], logprobs=sample, finish_reason="length"
        )
        for j in range(params.n)
    ]
    return SimpleNamespace(
        prompt=None, prompt_token_ids=ids, prompt_logprobs=prompt_logprobs, outputs=outputs
    )


def test_request_output_mapping_with_plain_objects():
    from neuroscribe.llm.vllm_local import map_request_output

    vocab = Vocab()
    prompt = "The cat\tunknown"
    tokens = tokenize(prompt)
    params = SimpleNamespace(n=1, prompt_logprobs=3, logprobs=3)
    out = engine_output(tokens, vocab, params)
    resp = map_request_output(out, prompt=prompt, n=3, k=3, echo=True)
    assert resp.usage.prompt_tokens == len(tokens) + 1 and resp.usage.completion_tokens == 1
    assert len(resp.choices) == 3  # greedy: one decode stands for the three answers
    c = resp.choices[2]
    assert c.text == prompt + "!" and c.finish_reason == "length"
    assert [t.token for t in c.prompt_tokens] == ["", *tokens]  # BOS has no prompt text
    assert c.prompt_tokens[-1].logprob == MISSING
    assert c.prompt_tokens[1].logprob == -2.5  # the first text token, after BOS
    assert [(t.token, t.logprob, t.top_logprobs) for t in c.tokens] == [
        ("!", -0.1, {"!": -0.1, "?": -2.6})
    ]
    # A chat (no prompt, no echo): text and generated-token logprobs only.
    chat = map_request_output(
        engine_output(tokens, vocab, SimpleNamespace(n=2, prompt_logprobs=None, logprobs=1)),
        prompt=None,
        n=2,
        k=1,
    )
    assert [c.text for c in chat.choices] == ["!", "!"] and chat.usage.completion_tokens == 2
    assert chat.choices[0].tokens[0].top_logprobs == {"!": -0.1}
    assert chat.choices[0].prompt_tokens is None
    # What cannot be read is an OutputError naming the entry, with the usage.
    bad = engine_output(tokens, vocab, SimpleNamespace(n=1, prompt_logprobs=None, logprobs=1))
    bad.outputs[0].logprobs = [{5: SimpleNamespace(logprob=-1.0, rank=1, decoded_token="x")}]
    with pytest.raises(OutputError, match=r"outputs\[0\]\.logprobs\[0\] has no entry for its own"):
        map_request_output(bad, prompt=None, n=1, k=1)
    out.prompt_logprobs[2] = {999: SimpleNamespace(logprob=float("nan"), rank=1)}
    with pytest.raises(OutputError, match=r"prompt_logprobs\[2\]\[.999.\]\.logprob is nan") as e:
        map_request_output(out, prompt=prompt, n=1, k=3, echo=True)
    assert e.value.usage.prompt_tokens == len(tokens) + 1


def test_vllm_local_without_vllm_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails
    with pytest.raises(ConfigError, match=r"pip install 'neuroscribe\[vllm\]'.*") as info:
        make_llm("vllm-local:Qwen/Qwen2.5-0.5B-Instruct")
    assert "GPU" in str(info.value) and "vllm:<model>" in str(info.value)
    from neuroscribe.llm import vllm_local

    with pytest.raises(ConfigError, match="GPU"):
        vllm_local._vllm()
    with pytest.raises(ConfigError, match="empty vLLM spec"):
        vllm_local.engine_model("vllm-local: ")


class FakeTokenizer:
    """The engine's (HF) tokenizer, as far as the backend uses it."""

    chat_template = None

    def __init__(self, vocab: Vocab, bos: bool = True):
        self.vocab = vocab
        self.bos = bos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [self.vocab.id(t) for t in tokenize(text)]
        return {"input_ids": [Vocab.BOS, *ids] if add_special_tokens and self.bos else ids}


def fake_vllm(calls: dict[str, list[Any]]) -> types.ModuleType:
    """A stand-in `vllm` module: `LLM(model, **engine_args)` and `SamplingParams(**kw)`."""
    module = types.ModuleType("vllm")
    vocab = Vocab()

    class SamplingParams(SimpleNamespace):
        pass

    class LLM:
        def __init__(self, model: str, **engine_args: Any):
            calls["init"].append({"model": model, **engine_args})
            self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096))

        def get_tokenizer(self) -> FakeTokenizer:
            return FakeTokenizer(vocab)

        def generate(
            self, prompts: list[Any], sampling_params: list[Any], use_tqdm: bool = True
        ) -> list[Any]:
            calls["generate"].append((prompts, sampling_params))
            outs = []
            for p, sp in zip(prompts, sampling_params, strict=True):
                ids = p["prompt_token_ids"]
                assert ids[0] == Vocab.BOS
                tokens = [vocab.texts[i] for i in ids[1:]]
                outs.append(engine_output(tokens, vocab, sp, bos=True))
            return outs

    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    return module


def test_vllm_local_engine_contract_with_a_stand_in_module(monkeypatch):
    from neuroscribe.llm import vllm_local

    calls: dict[str, list[Any]] = {"init": [], "generate": []}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    monkeypatch.setattr(vllm_local, "_ENGINES", {})
    llm = make_llm("vllm-local:tiny/model")
    assert isinstance(unwrap(llm), vllm_local.VLLMLocalLLM)
    caps = run(llm.capabilities())
    assert calls["init"] == [{"model": "tiny/model", "enable_prefix_caching": True}]
    assert caps.prompt_logprobs and caps.prompt_logprobs_style == "vllm"
    assert caps.chat_top_logprobs and not caps.exact_logits and caps.context_length == 4096
    assert caps.ten_single_token is True and caps.count_tokens("a b") == 3

    results = run(simulate(llm))
    expected = echo_results()
    assert [r.expected for r in results] == [r.expected for r in expected]
    assert [r.distributions for r in results] == [r.distributions for r in expected]
    # The excerpts' calls went to the engine together, as one batch.
    [(prompts, params)] = calls["generate"]
    assert len(prompts) == len(EXCERPTS)
    sp = params[0]
    assert (sp.n, sp.temperature, sp.max_tokens) == (1, 0.0, 1)
    assert sp.prompt_logprobs == 15 and sp.logprobs == 15

    calls["generate"].clear()
    resp = run(
        llm.chat(
            [{"role": "user", "content": "hi"}], n=2, temperature=0.7, max_tokens=5, stop=["\n"]
        )
    )
    [([_], [sp])] = calls["generate"]
    assert (sp.n, sp.temperature, sp.max_tokens, sp.stop) == (2, 0.7, 5, ["\n"])
    assert sp.prompt_logprobs is None and sp.logprobs is None
    assert [c.text for c in resp.choices] == ["!", "!"] and resp.usage.cost_usd is None
    # A prompt over the context is refused before it reaches the engine.
    from neuroscribe.prompts import PromptTooLong

    with pytest.raises(PromptTooLong, match="4096-token context"):
        run(llm.complete("word " * 4100, max_tokens=1))


def test_a_failing_request_fails_alone_in_its_batch(monkeypatch):
    from neuroscribe.llm import vllm_local

    calls: dict[str, list[Any]] = {"init": [], "generate": []}
    module = fake_vllm(calls)
    original = module.LLM.generate

    def generate(
        self: Any, prompts: list[Any], sampling_params: list[Any], use_tqdm: bool = True
    ) -> list[Any]:
        if any(sp.max_tokens == 13 for sp in sampling_params):
            raise ValueError("unlucky request")
        return original(self, prompts, sampling_params, use_tqdm)

    module.LLM.generate = generate
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_local, "_ENGINES", {})
    llm = make_llm("vllm-local:tiny/model")

    async def both() -> list[Any]:
        return await asyncio.gather(
            llm.complete("a b", max_tokens=1),
            llm.complete("c d", max_tokens=13),
            return_exceptions=True,
        )

    ok, bad = run(both())
    assert ok.choices[0].text == "!"
    assert isinstance(bad, LLMError) and "unlucky request" in str(bad)
