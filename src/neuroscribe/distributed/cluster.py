"""Connecting to a Ray cluster, or starting a local one, for the length of a job.

`--ray` takes:

- `auto`: the running cluster this machine belongs to (`RAY_ADDRESS`, or the one `ray start`
  left in /tmp/ray), as `ray.init(address="auto")` finds it;
- `local` or `local:N`: a new single-machine cluster bound to 127.0.0.1 with N CPUs (all
  CPUs without N), shut down when the job ends — for trying the distributed path on a
  laptop, and for tests;
- `HOST:PORT` or `ray://HOST:PORT`: that cluster (a Ray Client address for `ray://`).

A process that already called `ray.init` (a notebook, a test fixture) keeps its
connection: `ray_cluster` then neither connects again nor shuts it down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from neuroscribe.errors import ConfigError

LOOPBACK = "127.0.0.1"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "--ray needs Ray: pip install 'neuroscribe[ray]' (or pip install ray)"
        ) from e
    return ray


def check_workers(ray: str | None, ray_workers: int | None) -> None:
    """`--ray-workers` without a cluster is an error: one check for every command."""
    if ray_workers is not None and not ray:
        raise ConfigError("--ray-workers needs --ray ADDRESS (the cluster to run on)")


def parse_address(address: str) -> tuple[str, int | None]:
    """("local", N or None) for a local cluster, else (the address for ray.init, None)."""
    a = (address or "").strip()
    if not a:
        raise ConfigError("--ray needs an address: auto, local, local:N, HOST:PORT or ray://...")
    if a == "local" or a.startswith("local:"):
        n = a.partition(":")[2]
        if n and (not n.isdigit() or int(n) < 1):
            raise ConfigError(f"--ray {a}: the CPU count after local: must be a positive integer")
        return "local", int(n) if n else None
    return a, None


@contextmanager
def ray_cluster(address: str) -> Iterator[Any]:
    """The `ray` module, connected to the cluster `address` names, for the `with` body."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    target, cpus = parse_address(address)
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if target == "local":
        # A private cluster on loopback: nothing listens beyond this machine.
        kw.update(address="local", num_cpus=cpus or os.cpu_count() or 1)
        kw["_node_ip_address"] = LOOPBACK
    else:
        kw["address"] = target
    try:
        ray.init(**kw)
    except ConnectionError as e:
        raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster there: {e}") from e
    try:
        yield ray
    finally:
        ray.shutdown()
