"""Distributed recording: shard summaries merge into exactly what one pass collects.

Fast tests (no Ray) check the collector's merges on synthetic streams: the bottom-k
priority pool, top-k with ties, moments. Slow tests record a tiny model on a real local
Ray cluster on loopback with 1 and 3 workers and compare with the single-process path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch

from _record_helpers import SMALL_RECORDING, tiny_model_dir
from neuroscribe.datasets.collect import Collector, excerpt_priority, merge_moments
from neuroscribe.datasets.record import CHECKPOINT_DIR, record_run
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.schema import NeuronRecord, RunManifest

WIDTHS = [5, 3]
LENGTH = 7
OPTS = dict(length=LENGTH, n_top=6, pool_size=17, seed=3)

Batch = tuple[int, list[torch.Tensor], torch.Tensor, list[list[int]]]


def _batches(n: int = 203, batch: int = 5, seed: int = 0) -> list[Batch]:
    """A synthetic excerpt stream: (first id, acts per group [B, L, U], valid, windows).

    Values are rounded to 0.1 so that per-excerpt maxima tie often (tie-breaking is
    tested); windows have different lengths (padding is tested)."""
    rng = np.random.default_rng(seed)
    out = []
    for first in range(0, n, batch):
        size = min(batch, n - first)
        lens = rng.integers(2, LENGTH + 1, size)
        valid = torch.from_numpy(np.arange(LENGTH)[None, :] < lens[:, None])
        acts = [
            torch.from_numpy(np.round(rng.standard_normal((size, LENGTH, u)), 1).astype(np.float32))
            for u in WIDTHS
        ]
        windows = [rng.integers(0, 1000, int(k)).tolist() for k in lens]
        out.append((first, acts, valid, windows))
    return out


def _collect(batches: list[Batch], keep: Callable[[int], bool] = lambda b: True) -> Collector:
    c = Collector(WIDTHS, **OPTS)
    for b, (first, acts, valid, windows) in enumerate(batches):
        if keep(b):
            c.update(acts, valid, windows, first_id=first)
    return c


def _copy(c: Collector) -> Collector:
    return Collector.from_state_dict(c.state_dict())


def _merged(parts: list[Collector]) -> Collector:
    out = _copy(parts[0])
    for p in parts[1:]:
        out.merge(_copy(p))
    return out


def _by_id(c: Collector) -> dict[int, int]:
    return {int(e): s for s, e in enumerate(c.pool_ids.tolist())}


def _assert_same(a: Collector, b: Collector, rtol: float = 1e-12) -> None:
    """Same top-k (values, ids, activations, in order), same pool, moments to rtol."""
    assert (a.n_excerpts, a.n_tokens) == (b.n_excerpts, b.n_tokens)
    assert sorted(a.pool_ids.tolist()) == sorted(b.pool_ids.tolist())
    sa, sb = _by_id(a), _by_id(b)
    for e in sa:
        assert a.pool_tokens[sa[e]].tolist() == b.pool_tokens[sb[e]].tolist()
    for g, (ga, gb) in enumerate(zip(a.groups, b.groups, strict=True)):
        assert torch.equal(ga.top_ids, gb.top_ids)
        assert torch.equal(ga.top_vals, gb.top_vals)
        assert torch.equal(ga.top_acts, gb.top_acts)
        for e in ga.top_ids.unique().tolist():
            if e >= 0:
                assert a.tokens[e].tolist() == b.tokens[e].tolist()
        assert torch.equal(ga.nonzero, gb.nonzero) and torch.equal(ga.vmax, gb.vmax)
        for x, y in [(ga.mean, gb.mean), (ga.m2, gb.m2), (ga.m3, gb.m3), (ga.m4, gb.m4)]:
            scale = float(y.abs().max())
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=rtol, atol=rtol * scale)
        ids_a, ids_b = torch.from_numpy(a.pool_ids), torch.from_numpy(b.pool_ids)
        for e in sa:
            assert torch.equal(ga.pool_max[sa[e]], gb.pool_max[sb[e]])
            assert ga.pool_acts is not None and gb.pool_acts is not None
            assert torch.equal(ga.pool_acts[sa[e]], gb.pool_acts[sb[e]])
        # The random and quantile samples, as excerpt ids, are the same.
        kw = dict(n_random=4, n_quantiles=3, per_quantile=2, seed=5)
        ra, qa, ba = a.select_from_pool(g, **kw)
        rb, qb, bb = b.select_from_pool(g, **kw)
        assert torch.equal(ids_a[ra], ids_b[rb])
        assert torch.equal(
            torch.where(qa >= 0, ids_a[qa.clamp(min=0)], -1),
            torch.where(qb >= 0, ids_b[qb.clamp(min=0)], -1),
        )
        assert torch.equal(ba, bb)


@pytest.fixture(scope="module")
def stream() -> list[Batch]:
    return _batches()


@pytest.fixture(scope="module")
def one_pass(stream) -> Collector:
    return _collect(stream)


def test_priority_pool_is_the_bottom_k_of_a_hash(stream, one_pass):
    n = sum(len(w) for *_, w in stream)
    prio = excerpt_priority(OPTS["seed"], np.arange(n))
    assert len(np.unique(prio)) == n  # a bijection: priorities never tie
    assert sorted(one_pass.pool_ids.tolist()) == sorted(np.argsort(prio)[: OPTS["pool_size"]])
    # Another seed, another sample.
    assert set(np.argsort(excerpt_priority(4, np.arange(n)))[:17]) != set(one_pass.pool_ids)


def test_priority_pool_is_uniform():
    n, k = 100_000, 1000
    chosen = np.argsort(excerpt_priority(0, np.arange(n)))[:k]
    assert scipy.stats.kstest(chosen / n, "uniform").pvalue > 0.01
    # Consecutive ids are not correlated in priority (a weak hash would chain them).
    prio = excerpt_priority(0, np.arange(n)).astype(np.float64)
    assert abs(np.corrcoef(prio[:-1], prio[1:])[0, 1]) < 0.02


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(lambda b: b % 3, id="round-robin"),
        pytest.param(lambda b: 0 if b < 10 else 1 if b < 25 else 2, id="contiguous"),
        pytest.param(lambda b: int(np.random.default_rng(b).integers(3)), id="random"),
    ],
)
def test_three_shards_merge_into_one_pass(stream, one_pass, split):
    shards = [_collect(stream, lambda b, r=r: split(b) == r) for r in range(3)]
    assert sum(s.n_excerpts for s in shards) == one_pass.n_excerpts
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        _assert_same(_merged([shards[i] for i in order]), one_pass)
    # A tree of merges: (0 + 1) + 2 == 2 + (1 + 0).
    _assert_same(
        _merged([_merged(shards[:2]), shards[2]]), _merged([shards[2], _merged(shards[1::-1])])
    )


def test_top_k_breaks_ties_by_global_id(stream, one_pass):
    """Top-k = sort of all excerpts by (max descending, id ascending), ties included."""
    maxes, ids = [[] for _ in WIDTHS], []
    for first, acts, valid, _ in stream:
        ids += range(first, first + valid.shape[0])
        for g, a in enumerate(acts):
            maxes[g].append(a.masked_fill(~valid[:, :, None], -torch.inf).amax(1).numpy())
    ids_np = np.array(ids)
    n_ties = 0
    for g, m in enumerate(maxes):
        m = np.concatenate(m)  # [N, U]
        for u in range(m.shape[1]):
            want = ids_np[np.lexsort((ids_np, -m[:, u]))][: OPTS["n_top"]]
            assert one_pass.groups[g].top_ids[u].tolist() == want.tolist()
            top = m[want, u]
            n_ties += int((top[1:] == top[:-1]).sum())
    assert n_ties > 5  # the stream really has ties inside the top-k


def test_moments_merge_equals_direct_float64():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 1.5, size=(10_000, 4))  # skewed, so M3 and M4 matter

    def sums(v: np.ndarray) -> tuple[torch.Tensor, ...]:
        m = v.mean(0)
        d = v - m
        return tuple(torch.from_numpy(t) for t in (m, (d**2).sum(0), (d**3).sum(0), (d**4).sum(0)))

    parts = np.split(x, [1, 2500, 2501, 7000])  # uneven, including single values
    acc = sums(parts[0])
    n = len(parts[0])
    for p in parts[1:]:
        acc = merge_moments(n, acc, len(p), sums(p))
        n += len(p)
    for got, want in zip(acc, sums(x), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


def test_checkpoint_resume_continues_the_same_stream(stream, one_pass):
    half = _collect(stream, lambda b: b < 17)
    resumed = Collector.from_state_dict(half.state_dict())
    for _first, acts, valid, windows in stream[17:]:
        resumed.update(acts, valid, windows)  # ids continue from n_excerpts
    _assert_same(resumed, one_pass, rtol=0)


def test_checkpoint_of_the_old_reservoir_is_refused(one_pass):
    state = one_pass.state_dict()
    del state["pool_sampler"]
    with pytest.raises(DataError, match="--restart"):
        Collector.from_state_dict(state)


def test_merge_refuses_overlapping_or_other_collectors(stream):
    a = _collect(stream, lambda b: b < 5)
    with pytest.raises(ValueError, match="same excerpts"):
        _copy(a).merge(_copy(a))
    other = Collector(WIDTHS, **{**OPTS, "n_top": 2})
    with pytest.raises(ValueError, match="different recordings"):
        _copy(a).merge(other)


def _fake_ray(cpus: int, gpus: int, nodes: list[int]) -> SimpleNamespace:
    res = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return SimpleNamespace(
        cluster_resources=lambda: res,
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": float(c)}} for c in nodes],
    )


def test_worker_plan_defaults():
    from neuroscribe.datasets.record import RecordConfig
    from neuroscribe.distributed.record import plan_workers

    cpu = RecordConfig(ray="x", device="cpu")
    p = plan_workers(_fake_ray(8, 0, [4, 4]), cpu)
    assert (p.workers, p.device, p.num_cpus, p.num_gpus) == (8, "cpu", 1, 0)
    p = plan_workers(_fake_ray(8, 0, [4, 4]), cpu.model_copy(update={"ray_workers": 1}))
    assert (p.workers, p.num_cpus) == (1, 4)  # never more than one node has
    p = plan_workers(_fake_ray(16, 2, [8, 8]), RecordConfig(ray="x"))  # auto: the GPUs
    assert (p.workers, p.device, p.num_gpus) == (2, "cuda", 1)
    p = plan_workers(_fake_ray(16, 2, [8, 8]), RecordConfig(ray="x", device="cuda:1"))
    assert p.device == "cuda"  # each worker sees its own GPU as cuda:0
    with pytest.raises(ConfigError, match="no GPUs"):
        plan_workers(_fake_ray(8, 0, [8]), RecordConfig(ray="x", device="cuda"))


def test_a_rerun_resumes_only_checkpoints_it_can_use(tmp_path, caplog):
    from neuroscribe.datasets.record import RecordConfig
    from neuroscribe.distributed.record import _resume_workers, shard_checkpoint

    cfg = RecordConfig(ray="x", device="cpu")
    h = cfg.result_hash()

    def make(n: int, chash: str = h) -> None:
        for rank in range(n):
            shard_checkpoint(tmp_path, rank, n, chash, done=rank == 0).write_bytes(b"state")

    assert _resume_workers(tmp_path, cfg, restart=False) is None  # nothing to resume
    make(3)
    assert _resume_workers(tmp_path, cfg, restart=False) == 3  # no count given: theirs
    assert _resume_workers(tmp_path, cfg.model_copy(update={"ray_workers": 3}), False) == 3
    # Another explicit count shards the stream otherwise: start over, saying so.
    assert _resume_workers(tmp_path, cfg.model_copy(update={"ray_workers": 2}), False) is None
    assert "not used by 2 workers" in caplog.text and not list(tmp_path.iterdir())
    make(3, chash="0" * 16)  # a recording with other options
    with pytest.raises(ConfigError, match=r"other options.*--restart"):
        _resume_workers(tmp_path, cfg, restart=False)
    assert _resume_workers(tmp_path, cfg, restart=True) is None
    assert not list(tmp_path.iterdir())


def test_ray_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--ray-workers needs --ray"):
        record_run(tmp_path / "run", ray_workers=2)
    with pytest.raises(ConfigError, match="positive integer"):
        record_run(tmp_path / "run", ray="local:0")  # before the model is loaded
    assert not (tmp_path / "run" / "manifest.json").exists()


# ------------------------------------------------------------------ a real Ray cluster
SMALL = {
    **SMALL_RECORDING,
    "pool_size": 16,  # fewer than the 51 excerpts: the pool really samples
    "layers": [0, 2],
}
MOMENTS = ("mean", "variance", "skewness", "kurtosis", "max_activation", "frac_nonzero")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[object]:
    """A private 2-CPU Ray cluster on loopback for this module, shut down after it."""
    from neuroscribe.distributed.cluster import ray_cluster

    with ray_cluster("local:2") as ray:
        yield ray


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny-llama", "llama", hidden_act="relu")


def _compare(a: Path, b: Path) -> dict[str, float]:
    """Assert the records of two runs agree; return the largest differences seen."""
    worst = {"activation": 0.0, "moments_rel": 0.0}
    files = sorted((a / "records").glob("*.jsonl"))
    assert [f.name for f in files] == sorted(f.name for f in (b / "records").glob("*.jsonl"))
    for f in files:
        ra, rb = read_jsonl(f, NeuronRecord), read_jsonl(b / "records" / f.name, NeuronRecord)
        assert [r.unit_id for r in ra] == [r.unit_id for r in rb]
        for x, y in zip(ra, rb, strict=True):
            for name in ("most_positive_activation_records", "random_sample"):
                ex, ey = getattr(x, name), getattr(y, name)
                assert [e.tokens for e in ex] == [e.tokens for e in ey], (x.unit_id, name)
                for p, q in zip(ex, ey, strict=True):
                    d = float(np.max(np.abs(np.subtract(p.activations, q.activations))))
                    worst["activation"] = max(worst["activation"], d)
            assert x.random_sample_by_quantile is not None
            assert y.random_sample_by_quantile is not None
            for qx, qy in zip(
                x.random_sample_by_quantile, y.random_sample_by_quantile, strict=True
            ):
                assert [e.tokens for e in qx] == [e.tokens for e in qy]
                for p, q in zip(qx, qy, strict=True):
                    d = float(np.max(np.abs(np.subtract(p.activations, q.activations))))
                    worst["activation"] = max(worst["activation"], d)
            np.testing.assert_allclose(x.quantile_boundaries, y.quantile_boundaries, atol=1e-6)
            for k in MOMENTS:
                u, v = getattr(x, k), getattr(y, k)
                if u is None or v is None:
                    assert u is None and v is None
                    continue
                rel = abs(u - v) / max(abs(u), abs(v), 1e-12)
                worst["moments_rel"] = max(worst["moments_rel"], rel)
    assert worst["activation"] <= 1e-6 and worst["moments_rel"] <= 1e-9, worst
    return worst


@pytest.mark.slow  # a local Ray cluster and three recordings: ~15 s
def test_one_and_three_workers_write_the_records_of_one_process(tmp_path, ray_local, model_dir):
    t0 = time.perf_counter()
    plain = record_run(tmp_path / "plain", model=str(model_dir), **SMALL)
    t1 = time.perf_counter()
    one = record_run(tmp_path / "w1", model=str(model_dir), ray="local:2", ray_workers=1, **SMALL)
    t2 = time.perf_counter()
    three = record_run(tmp_path / "w3", model=str(model_dir), ray="local:2", ray_workers=3, **SMALL)
    t3 = time.perf_counter()
    assert plain.n_tokens == one.n_tokens == three.n_tokens == SMALL["max_tokens"]
    assert plain.n_excerpts == one.n_excerpts == three.n_excerpts

    w1_vs_plain = _compare(tmp_path / "plain", tmp_path / "w1")
    w3_vs_w1 = _compare(tmp_path / "w1", tmp_path / "w3")
    w3_vs_plain = _compare(tmp_path / "plain", tmp_path / "w3")
    # One shard merges nothing: byte for byte the single-process records.
    for f in plain.files:
        assert f.read_bytes() == (tmp_path / "w1" / "records" / f.name).read_bytes()

    m = RunManifest.model_validate_json((tmp_path / "w3" / "manifest.json").read_text())
    st = m.stages["record"]
    assert st["workers"] == 3 and st["ray"]["workers"] == 3 and st["device"] == "cpu"
    assert st["n_tokens"] == SMALL["max_tokens"] and st["config"]["ray"] == "local:2"
    plain_st = RunManifest.model_validate_json((tmp_path / "plain" / "manifest.json").read_text())
    assert plain_st.stages["record"]["workers"] == 1
    # The same options, spread differently: the same recording (the hash ignores workers).
    assert st["config_hash"] == plain_st.stages["record"]["config_hash"]
    assert record_run(tmp_path / "w3", model=str(model_dir), **SMALL).skipped
    assert not (tmp_path / "w3" / CHECKPOINT_DIR).exists()
    print(
        json.dumps(
            {
                "w1_vs_plain": w1_vs_plain,
                "w3_vs_w1": w3_vs_w1,
                "w3_vs_plain": w3_vs_plain,
                "seconds": {
                    "plain": round(t1 - t0, 2),
                    "w1": round(t2 - t1, 2),
                    "w3": round(t3 - t2, 2),
                },
            }
        )
    )


@pytest.mark.slow  # a local Ray cluster: seconds
def test_recomputed_pool_activations_agree(tmp_path, ray_local, model_dir):
    """With no memory for the pool's activations the driver recomputes the chosen ones."""
    opts = {**SMALL, "layers": [1], "pool_memory_mb": 0}
    record_run(
        tmp_path / "kept",
        model=str(model_dir),
        ray="local:2",
        ray_workers=3,
        **SMALL | {"layers": [1]},
    )
    record_run(tmp_path / "rerun", model=str(model_dir), ray="local:2", ray_workers=3, **opts)
    _compare(tmp_path / "kept", tmp_path / "rerun")


@pytest.mark.slow  # a local Ray cluster: seconds
def test_a_failed_shard_stops_the_job_and_writes_nothing(tmp_path, ray_local, model_dir):
    from neuroscribe.distributed.record import ShardError

    corpus = tmp_path / "c.jsonl"
    good = [json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 20})] * 40
    corpus.write_text("\n".join([*good, "{not json"]) + "\n")
    run = tmp_path / "run"
    with pytest.raises(
        ShardError, match=r"recording shard [01] \(of shards 0-1: .*malformed JSON"
    ) as e:
        record_run(
            run,
            model=str(model_dir),
            ray="local:2",
            ray_workers=2,
            corpus=str(corpus),
            **{**SMALL, "max_tokens": 100_000},
        )
    assert "c.jsonl:41" in str(e.value) and "nothing was written" in str(e.value)
    assert not list(run.glob("records/*.jsonl")) and not (run / "manifest.json").exists()


@pytest.mark.slow  # a local Ray cluster: seconds
def test_cli_ray_flag(tmp_path, ray_local, model_dir):
    from _cli import run_cli

    args = ["record", "--model", str(model_dir), "--layers", "0", "--max-units", "3"]
    args += ["--max-tokens", "300", "--excerpt-len", "16", "--device", "cpu"]
    res = run_cli(*args, "--out", str(tmp_path / "run"), "--ray", "local:2", "--ray-workers", "2")
    assert "wrote 3 units from 300 tokens" in res.stderr
    st = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["record"]
    assert st["workers"] == 2
    bad = run_cli(*args, "--out", str(tmp_path / "bad"), "--ray-workers", "2", check=False)
    assert bad.returncode == 1 and "--ray-workers needs --ray" in bad.stderr


@pytest.mark.slow  # a local Ray cluster, a driver killed mid-recording, then resumed: ~30 s
def test_a_killed_distributed_recording_resumes_to_the_records_of_one_process(
    tmp_path, ray_local, model_dir
):
    import random
    import signal
    import subprocess
    import sys

    from neuroscribe.distributed.record import shard_checkpoints

    rng = random.Random(0)
    words = [*"abcdefghij", "the", "cat", "(", ")", "[", "]", "42", "dogs", "night"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": " ".join(rng.choices(words, k=200))}) for _ in range(400))
    )
    opts = {**SMALL, "max_tokens": 60_000, "corpus": str(corpus)}
    out = tmp_path / "ray"
    address = ray_local.get_runtime_context().gcs_address
    code = (
        "from neuroscribe.datasets.record import record_run; "
        f"record_run({str(out)!r}, model={str(model_dir)!r}, ray={address!r}, "
        f"ray_workers=3, checkpoint_every=1, checkpoint_seconds=0, **{opts!r})"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    folder = out / CHECKPOINT_DIR
    deadline = time.monotonic() + 120
    while not any(not done for *_, done in shard_checkpoints(folder)):
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        assert time.monotonic() < deadline, "no shard checkpointed in time"
        time.sleep(0.05)
    time.sleep(0.5)  # a few more batches
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    left = shard_checkpoints(folder)
    assert left and {n for _, _, n, _, _ in left} == {3}
    assert not (out / "manifest.json").exists()

    # The same command, without a worker count: the checkpoints' three workers resume.
    summary = record_run(out, model=str(model_dir), ray="local:2", **opts)
    st = RunManifest.model_validate_json((out / "manifest.json").read_text()).stages["record"]
    resumed = st["ray"]["resumed"]
    assert st["workers"] == 3 and resumed["finished_shards"] + resumed["batches"] > 0, resumed
    assert summary.n_tokens == opts["max_tokens"]
    assert not folder.exists()  # removed with the records written
    plain = record_run(tmp_path / "plain", model=str(model_dir), **opts)
    assert plain.n_excerpts == summary.n_excerpts
    _compare(tmp_path / "plain", out)


@pytest.mark.slow  # a local Ray cluster: seconds
def test_a_shard_finished_before_is_read_back_not_run_again(tmp_path, ray_local, model_dir):
    from neuroscribe.datasets.record import RecordConfig
    from neuroscribe.distributed.record import record_shard, shard_checkpoints

    out, folder = tmp_path / "ray", tmp_path / "ray" / CHECKPOINT_DIR
    cfg = RecordConfig(model=str(model_dir), ray="local:2", ray_workers=2, **SMALL)
    # Shard 0 of 2 ran to its end before (here, in this process) and left its state.
    record_shard(cfg.model_dump(), 0, 2, "cpu", 1, False, str(folder.resolve()))
    assert [(rank, done) for _, rank, _, _, done in shard_checkpoints(folder)] == [(0, True)]
    record_run(out, model=str(model_dir), ray="local:2", ray_workers=2, **SMALL)
    st = RunManifest.model_validate_json((out / "manifest.json").read_text()).stages["record"]
    assert st["ray"]["resumed"] == {"finished_shards": 1, "batches": 0}
    record_run(tmp_path / "plain", model=str(model_dir), **SMALL)
    _compare(tmp_path / "plain", out)
    assert not folder.exists()
