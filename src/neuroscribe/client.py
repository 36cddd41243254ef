"""The Python client of the neuroscribe service (`neuroscribe serve`): see `neuroscribe.service.client`."""

from __future__ import annotations

from neuroscribe.service.client import Client, ServiceError

__all__ = ["Client", "ServiceError"]
