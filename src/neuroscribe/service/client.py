"""A small Python client of the service (`neuroscribe serve`), over httpx.

    from neuroscribe.client import Client

    c = Client("http://127.0.0.1:8765", token=None)
    job = c.create_job("my-run", config={"explain": {"model": "gpt-4o-mini"}})
    for event in c.events(job["id"]):         # server-sent events until the job ends
        print(event["kind"], event["data"])
    c.wait(job["id"])
    rows = c.scores("my-run", min_score=0.5)["items"]

Every error answer becomes a `ServiceError` with the HTTP status and the server's
message. `transport` takes any httpx transport (tests: `httpx.MockTransport`, or an
ASGI app through `httpx.ASGITransport`); `http` a ready `httpx.Client`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from neuroscribe.errors import NeuroscribeError

TERMINAL = ("done", "failed", "cancelled")


class ServiceError(NeuroscribeError):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.details = details


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8765",
        *,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if http is not None:  # a ready client (e.g. Starlette's TestClient over the app)
            http.headers.update(headers)
            self._http = http
            return
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        if "params" in kw:
            kw["params"] = {k: v for k, v in kw["params"].items() if v is not None}
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                body = r.json()
                raise ServiceError(r.status_code, body.get("error", r.text), body.get("details"))
            except ValueError:
                raise ServiceError(r.status_code, r.text[:500]) from None
        return r.json()

    # ------------------------------------------------------------ jobs

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def create_job(
        self,
        run: str,
        config: dict[str, Any] | None = None,
        *,
        records: list[Any] | None = None,
        stages: str = "run",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"run": run, "stages": stages, "config": config or {}}
        if records is not None:
            body["records"] = [
                r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in records
            ]
        return self._call("POST", "/v1/jobs", json=body)

    def jobs(self, *, state: str | None = None, run: str | None = None, offset: int = 0,
             limit: int = 50) -> dict[str, Any]:  # fmt: skip
        params = {"state": state, "run": run, "offset": offset, "limit": limit}
        return self._call("GET", "/v1/jobs", params=params)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def resume(self, job_id: str, *, retry_failed: bool = False,
               max_cost: float | None = None) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"retry_failed": retry_failed}
        if max_cost is not None:
            body["max_cost"] = max_cost
        return self._call("POST", f"/v1/jobs/{job_id}/resume", json=body)

    def wait(self, job_id: str, *, timeout: float = 600.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled; returns its last state."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(poll_s)

    def events(self, job_id: str, *, after: int = 0, follow: bool = True) -> Iterator[dict]:
        """The job's events (`state`, `message`, `stage`, `progress`), until it ends."""
        params = {"after": after, "follow": str(follow).lower()}
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", params=params,
                               timeout=None) as r:  # fmt: skip
            if r.status_code >= 400:
                r.read()
                raise ServiceError(r.status_code, r.json().get("error", r.text))
            kind, data = None, []
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "":
                    if kind == "end":
                        return
                    if kind and data:
                        yield json.loads("\n".join(data))
                    kind, data = None, []

    # ------------------------------------------------------------ results

    def runs(self) -> dict[str, Any]:
        return self._call("GET", "/v1/runs")

    def run(self, run: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run}")

    def units(self, run: str, **filters: Any) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run}/units", params=filters)

    def unit(self, run: str, unit_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run}/units/{unit_id}")

    def explanations(self, run: str, **filters: Any) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run}/explanations", params=filters)

    def scores(self, run: str, **filters: Any) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run}/scores", params=filters)

    def failures(self, run: str, **filters: Any) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run}/failures", params=filters)

    # ------------------------------------------------------------ single calls

    def explain(self, excerpts: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/explain", json={"excerpts": excerpts, **options})

    def simulate(self, explanation: str, excerpts: list[dict[str, Any]],
                 **options: Any) -> dict[str, Any]:  # fmt: skip
        body = {"explanation": explanation, "excerpts": excerpts, **options}
        return self._call("POST", "/v1/simulate", json=body)

    def score(self, explanation: str, excerpts: list[dict[str, Any]],
              **options: Any) -> dict[str, Any]:  # fmt: skip
        body = {"explanation": explanation, "excerpts": excerpts, **options}
        return self._call("POST", "/v1/score", json=body)


__all__ = ["Client", "ServiceError"]
