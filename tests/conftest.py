"""Shared pytest fixtures (fixtures only; helpers live in tests/servers.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `from servers import ...`

from servers import FaultProxy, LlamaServer, llama_server_available, start_llama_server

SERVER_KEY = "sk-neuroscribe-test-SECRET-7f3a9c"  # distinctive, to grep for leaks


@pytest.fixture(autouse=True)
def _own_check_store(tmp_path_factory, monkeypatch) -> None:
    """Simulator check results go to a per-test folder, never the user's cache: a check
    saved by one test (or by the user) must not change what `run` or `compare` show."""
    monkeypatch.setenv("NEUROSCRIBE_CHECKS", str(tmp_path_factory.mktemp("checks")))


def _start(**kwargs: object) -> LlamaServer:
    reason = llama_server_available()
    if reason:
        # A missing optional dependency is a set-up problem, not a test failure to hide:
        # fail loudly so CI never silently skips the real-server tests.
        pytest.fail(f"cannot start the llama.cpp test server: {reason}")
    return start_llama_server(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """A real llama.cpp OpenAI-compatible server with SmolLM2-135M on loopback.

    Yields a `LlamaServer` with `.base_url` (ending in /v1) and `.model` ("smollm2").
    Started once per test session, stopped at the end.
    """
    server = _start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_server_with_key() -> Iterator[LlamaServer]:
    """Like `llama_server` but every request needs `Authorization: Bearer <.api_key>`."""
    server = _start(api_key=SERVER_KEY)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(llama_server: LlamaServer) -> Iterator[Callable[..., FaultProxy]]:
    """Factory: `fault_proxy(rates={...}, script=[...], seed=0, slow_s=..., rewrite=...)`.

    Returns a started `FaultProxy` in front of the session's llama.cpp server; give the
    client `proxy.base_url`. Every proxy made is stopped after the test.
    """
    made: list[FaultProxy] = []

    def make(**kwargs: object) -> FaultProxy:
        proxy = FaultProxy(upstream=llama_server.root_url, **kwargs).start()  # type: ignore[arg-type]
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.stop()
