"""neuroscribe as a service: `neuroscribe serve` (an HTTP API and a browser UI).

    from neuroscribe.service import ServiceConfig, create_app, serve
    from neuroscribe.service.client import Client

The API is versioned under `/v1/` (OpenAPI document at `/v1/openapi.json`); jobs are kept
in SQLite next to the run directories and resume after a restart (see `scheduler`).
"""

from __future__ import annotations

from neuroscribe.service.app import Service, ServiceConfig, check_bind, create_app, serve

__all__ = ["Service", "ServiceConfig", "check_bind", "create_app", "serve"]
