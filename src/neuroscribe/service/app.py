"""`neuroscribe serve`: the HTTP service (FastAPI) — JSON API under `/v1/`, browser UI at `/`.

    from neuroscribe.service import ServiceConfig, create_app
    app = create_app(ServiceConfig(root=Path("runs")))   # any ASGI server; or serve(config)

What every request passes first (`Guard`, one ASGI middleware): the Host check (a
loopback-bound server answers only to loopback names: no DNS rebinding), the bearer
token when one is set (constant-time compare; the browser UI may log in once with
`/?token=...`, which sets an HttpOnly, SameSite=Strict cookie), a per-client rate limit
and a body size limit. Every error is JSON `{"error": "...", "details": [...]}` with a
4xx status that says what was wrong; an unexpected bug is a 500 with no traceback or
internals in the body (they go to the log, scrubbed of secrets).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hmac
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Body, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from neuroscribe import __version__
from neuroscribe.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    LLMError,
    NeuroscribeError,
    OutputError,
)
from neuroscribe.llm.secrets import SECRETS, install_log_scrubbing
from neuroscribe.service import calls
from neuroscribe.service import runs as R
from neuroscribe.service.models import (
    ExplainRequest,
    ExplainResponse,
    JobCreate,
    JobResume,
    JobView,
    Page,
    ScoreRequest,
    ScoreResponse,
    SimulateRequest,
    SimulateResponse,
)
from neuroscribe.service.scheduler import Scheduler, build_config
from neuroscribe.service.store import ACTIVE, TERMINAL, JobStore
from neuroscribe.service.ui import jobs_csp, jobs_page

log = logging.getLogger("neuroscribe.service")

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]", "::1"}
JOB_ID = r"^[0-9a-f]{12}$"
MAX_LIMIT = 1000


@dataclass
class ServiceConfig:
    root: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_jobs: int = 2  # jobs running at once; the rest wait, queued
    max_body_bytes: int = 16 * 1024 * 1024
    rate_limit: float = 50.0  # requests per second per client (bursts of twice that); 0: off
    allowed_hosts: set[str] | None = field(default=None)  # None: loopback names if loopback
    # `--ray ADDRESS` (auto, local, local:N, HOST:PORT): jobs' explain/score items run on
    # that Ray cluster, connected once for the server's life; `--ray-workers N` per job.
    ray: str | None = None
    ray_workers: int | None = None


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the service beyond this machine without a bearer token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host} makes the service reachable from other machines: it needs a "
            "bearer token (--token-file FILE, the NEUROSCRIBE_TOKEN environment variable, "
            "or --token); clients then send 'Authorization: Bearer TOKEN'"
        )
    if token is not None and len(token) < 16:
        raise ConfigError("the bearer token must be at least 16 characters long")


# ---------------------------------------------------------------- the service's state


class Service:
    """The store, the scheduler, the result cache and the root's lock of one server."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        from neuroscribe.distributed.cluster import check_workers, import_ray, parse_address

        check_workers(cfg.ray, cfg.ray_workers)
        if cfg.ray is not None:
            parse_address(cfg.ray)  # a bad address or a missing extra: an error now
            import_ray()
        self.root = Path(cfg.root).resolve()
        if not self.root.is_dir():
            raise ConfigError(f"--root {cfg.root}: no such folder")
        home = self.root / R.SERVICE_DIR
        home.mkdir(exist_ok=True)
        self._lock_file = open(home / "server.lock", "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise ConfigError(
                f"another neuroscribe server (pid {holder}) serves {self.root}; stop it or "
                "give another --root"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        self.store = JobStore(home / "jobs.sqlite")
        self.scheduler = Scheduler(
            self.root, self.store, max_jobs=cfg.max_jobs, ray=cfg.ray, ray_workers=cfg.ray_workers
        )
        self._ray: Any = None  # the open connection's context manager, with --ray
        self.results = R.ResultCache()
        self.create_lock = threading.Lock()  # one "is this run free?" check at a time
        self.started = False

    def start(self) -> None:
        if not self.started:
            if self.cfg.ray is not None:
                # One connection for the server's life: each job's stages find it open
                # (ray_cluster keeps an existing one), so no job's end disconnects another.
                from neuroscribe.distributed.cluster import ray_cluster

                self._ray = ray_cluster(self.cfg.ray)
                self._ray.__enter__()
            self.started = True
            resumed = self.scheduler.start()
            if resumed:
                log.warning("resuming %d jobs left by the last server", len(resumed))

    def close(self) -> None:
        if self.started:
            self.scheduler.stop()
        if self._ray is not None:
            self._ray.__exit__(None, None, None)
            self._ray = None
        self.store.close()
        self._lock_file.close()


# ---------------------------------------------------------------- responses


def _finite(obj: Any) -> Any:
    """JSON has no NaN or Infinity: they are sent as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


class SafeJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(
            _finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")


def error(status: int, message: str, details: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> SafeJSON:  # fmt: skip
    body: dict[str, Any] = {"error": SECRETS.scrub(message)}
    if details:
        body["details"] = details
    return SafeJSON(body, status_code=status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors()[:20]:
        loc = [str(p) for p in e.get("loc", ())]
        # No "input" (it may hold a posted key) and no "ctx" (not always JSON).
        out.append({"loc": loc, "msg": str(e.get("msg", ""))[:500], "type": e.get("type")})
    return out


# ---------------------------------------------------------------- the guard


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
COOKIE = "neuroscribe_token"


class Guard:
    """Host check, bearer token, rate limit and body size limit for every request."""

    def __init__(self, app: Any, cfg: ServiceConfig) -> None:
        self.app = app
        self.token = cfg.token
        self.max_body = cfg.max_body_bytes
        self.rate = cfg.rate_limit
        self.buckets: dict[str, tuple[float, float]] = {}
        hosts = cfg.allowed_hosts
        if hosts is None and is_loopback(cfg.host):
            hosts = LOOPBACK_NAMES
        self.hosts = {h.lower() for h in hosts} if hosts is not None else None

    async def _reply(self, send: Any, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] = ()) -> None:  # fmt: skip
        data = json.dumps(body).encode("utf-8")
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
            *_SECURITY_HEADERS, _API_CSP, *headers]})  # fmt: skip
        await send({"type": "http.response.body", "body": data})

    def _host_ok(self, host: str) -> bool:
        if self.hosts is None:
            return True
        host = host.strip().lower()
        if host.startswith("["):
            name = host.partition("]")[0] + "]"
        else:
            name = host.rpartition(":")[0] if host.count(":") == 1 else host
        return name in self.hosts

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None
        want = self.token.encode("utf-8")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return hmac.compare_digest(auth[7:].strip(), want)
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == COOKIE.encode():
                return hmac.compare_digest(value, want)
        return False

    def _allow_rate(self, client: str) -> bool:
        if not self.rate:
            return True
        now = time.monotonic()
        burst = max(1.0, 2 * self.rate)
        tokens, last = self.buckets.get(client, (burst, now))
        tokens = min(burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            return False
        self.buckets[client] = (tokens - 1, now)
        if len(self.buckets) > 10_000:  # forget idle clients
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < 60}
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if not self._host_ok(headers.get(b"host", b"").decode("latin-1")):
            await self._reply(send, 421, {"error": "unexpected Host header: this server "
                                          "answers to 127.0.0.1 / localhost only"})  # fmt: skip
            return
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = query.get("token", [None])[0]
            if (
                scope["path"] == "/"
                and given is not None
                and hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))
            ):
                cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                await send({"type": "http.response.start", "status": 303, "headers": [
                    (b"location", b"/"), (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"), *_SECURITY_HEADERS]})  # fmt: skip
                await send({"type": "http.response.body", "body": b""})
                return
            if not self._authorized(headers):
                await self._reply(send, 401, {"error": "missing or wrong bearer token: send "
                                              "'Authorization: Bearer TOKEN'"},
                                  [(b"www-authenticate", b"Bearer")])  # fmt: skip
                return
        client = (scope.get("client") or ("?", 0))[0]
        if not self._allow_rate(client):
            await self._reply(send, 429, {"error": f"too many requests: at most "
                                          f"{self.rate:g} per second per client"},
                              [(b"retry-after", b"1")])  # fmt: skip
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                declared = int(headers.get(b"content-length", b"0") or 0)
            except ValueError:
                await self._reply(send, 400, {"error": "bad Content-Length header"})
                return
            if declared > self.max_body:
                await self._reply(send, 413, self._too_big())
                return
            chunks, size = [], 0
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await self._reply(send, 413, self._too_big())
                    return
                chunks.append(chunk)
                if not msg.get("more_body"):
                    break
            receive = _replay(b"".join(chunks))

        async def send_with_headers(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                present = {k.lower() for k, _ in msg.get("headers", [])}
                extra = [h for h in _SECURITY_HEADERS if h[0] not in present]
                if b"content-security-policy" not in present:
                    extra.append(_API_CSP)
                msg = {**msg, "headers": [*msg.get("headers", []), *extra]}
            await send(msg)

        await self.app(scope, receive, send_with_headers)

    def _too_big(self) -> dict[str, Any]:
        return {"error": f"request body too large: at most {self.max_body} bytes "
                f"(the server's --max-body)"}  # fmt: skip


def _replay(body: bytes) -> Any:
    """A `receive` that gives the body read by the guard once, then waits (no disconnect)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


# ---------------------------------------------------------------- the app


def create_app(cfg: ServiceConfig, service: Service | None = None) -> FastAPI:
    """The service as an ASGI app; it opens (and closes) its store in its lifespan."""
    install_log_scrubbing()
    if cfg.token:
        SECRETS.add(cfg.token)
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc = service or Service(cfg)
        holder["svc"] = svc
        svc.start()
        try:
            yield
        finally:
            await asyncio.to_thread(svc.close)

    app = FastAPI(
        title="neuroscribe",
        version=__version__,
        description="Explanation and scoring jobs over run directories, single explain / "
        "simulate / score calls, and the runs' results.",
        openapi_url="/v1/openapi.json",
        docs_url=None,  # the Swagger page loads its script from a CDN: not offline, not CSP
        redoc_url=None,
        lifespan=lifespan,
        default_response_class=SafeJSON,
    )
    app.add_middleware(Guard, cfg=cfg)

    def svc() -> Service:
        return holder["svc"]

    # ------------------------------------------------------------ errors

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> SafeJSON:
        details = _validation_details(exc)
        first = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:3])
        return error(422, f"invalid request: {first}", details)

    @app.exception_handler(HTTPException)
    async def _http(_req: Request, exc: HTTPException) -> SafeJSON:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(R.NotFound)
    async def _not_found(_req: Request, exc: R.NotFound) -> SafeJSON:
        return error(404, str(exc))

    @app.exception_handler(NeuroscribeError)
    async def _library(_req: Request, exc: NeuroscribeError) -> SafeJSON:
        if isinstance(exc, BudgetExceeded):
            return error(402, str(exc))
        if isinstance(exc, OutputError):
            return error(422, f"the model's answer could not be used: {exc}")
        if isinstance(exc, LLMError):
            return error(502, f"model backend error: {exc}")
        if isinstance(exc, ConfigError | DataError):
            return error(422, str(exc))
        return error(400, str(exc))

    @app.exception_handler(ValidationError)
    async def _model_invalid(_req: Request, exc: ValidationError) -> SafeJSON:
        details = [{"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"])[:500],
                    "type": e["type"]} for e in exc.errors()[:20]]  # fmt: skip
        first = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:3])
        return error(422, f"invalid data: {first}", details)

    @app.exception_handler(TimeoutError)
    async def _timeout(_req: Request, exc: TimeoutError) -> SafeJSON:
        return error(504, "the model call took longer than its timeout")

    @app.exception_handler(Exception)
    async def _bug(_req: Request, exc: Exception) -> SafeJSON:
        log.error("internal error: %s", SECRETS.scrub(repr(exc)))
        return error(500, "internal error (the server log has the details)")

    # ------------------------------------------------------------ jobs

    def view(job: dict[str, Any]) -> dict[str, Any]:
        jid, run = job["id"], job["run"]
        return {
            **{
                k: job[k]
                for k in (
                    "id",
                    "run",
                    "stages",
                    "state",
                    "error",
                    "attempts",
                    "summaries",
                    "config",
                    "created_at",
                    "updated_at",
                    "started_at",
                    "finished_at",
                )
            },
            "progress": job["progress"] or {},
            "links": {
                "self": f"/v1/jobs/{jid}",
                "events": f"/v1/jobs/{jid}/events",
                "run": f"/v1/runs/{run}",
                "report": f"/runs/{run}/",
            },
        }

    def get_job(job_id: str) -> dict[str, Any]:
        job = svc().store.get(job_id)
        if job is None:
            raise R.NotFound(f"no job {job_id!r}")
        return job

    def active_job(run: str) -> dict[str, Any] | None:
        jobs, _ = svc().store.list(states=ACTIVE, run=run, limit=1)
        return jobs[0] if jobs else None

    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, Any]:
        _, n_active = svc().store.list(states=ACTIVE, limit=0)
        return {"status": "ok", "version": __version__, "active_jobs": n_active}

    @app.get("/v1/jobs", response_model=Page, tags=["jobs"])
    def list_jobs(
        state: str | None = Query(None, pattern="^(queued|running|done|failed|cancelled)$"),
        run: str | None = Query(None, max_length=128),
        offset: int = Query(0, ge=0, le=10**9),
        limit: int = Query(50, ge=1, le=MAX_LIMIT),
    ) -> dict[str, Any]:
        jobs, total = svc().store.list(
            states=[state] if state else None, run=run, offset=offset, limit=limit
        )
        return {"items": [view(j) for j in jobs], "total": total, "offset": offset,
                "limit": limit}  # fmt: skip

    @app.post("/v1/jobs", response_model=JobView, status_code=201, tags=["jobs"])
    def create_job(body: JobCreate) -> dict[str, Any]:
        s = svc()
        path = R.run_path(s.root, body.run, must_exist=False)
        config = dict(body.config)
        if "run_dir" in config:
            raise ConfigError("config.run_dir: the service sets it from 'run'; leave it out")
        endpoint = dict(config.get("endpoint") or {})
        key = endpoint.pop("api_key", None)
        config["endpoint"] = endpoint
        try:
            from pydantic import SecretStr

            secret = SecretStr(key) if isinstance(key, str) and key else None
        except Exception:
            secret = None
        if key is not None and secret is None:
            raise ConfigError("config.endpoint.api_key must be a non-empty string")
        if secret is not None:
            SECRETS.add(secret.get_secret_value())
        rc = build_config(path, config, secret)
        if rc.jobs.ray is not None:
            raise ConfigError(
                "config.jobs.ray: where jobs run is the server's choice (`neuroscribe serve "
                "--ray ADDRESS`); leave it out"
            )
        if rc.jobs.ray_workers is not None and s.cfg.ray is None:
            raise ConfigError(
                "config.jobs.ray_workers: this server runs jobs in its own process (it was "
                "started without --ray)"
            )
        if rc.jobs.prices is not None:
            prices = (s.root / rc.jobs.prices).resolve()
            if not prices.is_relative_to(s.root) or not prices.is_file():
                raise ConfigError("config.jobs.prices must name a file under the server's root")
            rc.jobs.prices = prices
        with s.create_lock:
            busy = active_job(body.run)
            if busy is not None:
                raise HTTPException(409, f"run {body.run!r} already has an active job "
                                    f"({busy['id']}, {busy['state']}): wait, or cancel it")  # fmt: skip
            if body.records is not None:
                from neuroscribe.jsonl import append_jsonl
                from neuroscribe.rundir import RunDir

                rd = RunDir(path)
                if rd.has_records():
                    raise HTTPException(409, f"run {body.run!r} already holds records: start "
                                        "a job on it without posting records")  # fmt: skip
                rd.records_dir.mkdir(parents=True, exist_ok=True)
                ids = [r.unit_id for r in body.records]
                if len(set(ids)) != len(ids):
                    raise ConfigError("records: two records have the same unit_id")
                append_jsonl(rd.records_dir / "posted.jsonl", body.records)
            elif not path.is_dir():
                if body.stages != "run":
                    raise R.NotFound(f"no run {body.run!r} under the server's root: post "
                                     "records to create it")  # fmt: skip
                path.mkdir()
            stored = rc.model_dump(mode="json", exclude={"run_dir"})
            job_id = s.store.create(body.run, body.stages, stored, R.usage_size(path))
        s.scheduler.remember_key(job_id, secret)
        s.scheduler.submit(job_id)
        return view(get_job(job_id))

    JobId = PathParam(..., pattern=JOB_ID, description="a job id (12 hex digits)")

    @app.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def job(job_id: str = JobId) -> dict[str, Any]:
        return view(get_job(job_id))

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobView, tags=["jobs"])
    def cancel(job_id: str = JobId) -> dict[str, Any]:
        j = get_job(job_id)
        if j["state"] in TERMINAL:
            raise HTTPException(409, f"job {job_id} is already {j['state']}")
        svc().scheduler.cancel(job_id)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            j = get_job(job_id)
            if j["state"] in TERMINAL:
                break
            time.sleep(0.02)
        return view(j)

    @app.post("/v1/jobs/{job_id}/resume", response_model=JobView, tags=["jobs"])
    def resume(job_id: str = JobId, body: JobResume | None = Body(None)) -> dict[str, Any]:
        s = svc()
        body = body or JobResume()
        with s.create_lock:
            j = get_job(job_id)
            if j["state"] in ACTIVE or s.scheduler.is_busy(job_id):
                raise HTTPException(409, f"job {job_id} is {j['state']}: nothing to resume")
            busy = active_job(j["run"])
            if busy is not None:
                raise HTTPException(409, f"run {j['run']!r} has another active job "
                                    f"({busy['id']}): wait, or cancel it")  # fmt: skip
            config = dict(j["config"])
            jobs = dict(config.get("jobs") or {})
            jobs["retry_failed"] = body.retry_failed
            if body.max_cost is not None:
                jobs["max_cost"] = body.max_cost
            config["jobs"] = jobs
            build_config(s.root / j["run"], config)  # still valid?
            s.store.update(job_id, config=config, error=None, finished_at=None)
            s.store.event(job_id, "message", {"text": "resumed: finished units are kept"})
            s.store.set_state(job_id, "queued")
        s.scheduler.submit(job_id)
        return view(get_job(job_id))

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"],
             responses={200: {"content": {"text/event-stream": {}}}})  # fmt: skip
    async def events(
        request: Request,
        job_id: str = JobId,
        after: int = Query(0, ge=0, le=10**12),
        follow: bool = Query(True, description="keep the stream open until the job ends"),
    ) -> StreamingResponse:
        """Server-sent events: `state`, `message`, `stage`, `progress`; `end` when done."""
        await asyncio.to_thread(get_job, job_id)
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() and len(last) < 13 else after

        async def stream() -> AsyncIterator[bytes]:
            seq = start
            yield b"retry: 1000\n\n"
            while True:
                batch = await asyncio.to_thread(svc().store.events, job_id, seq)
                for ev in batch:
                    seq = ev["seq"]
                    data = json.dumps(_finite(ev), allow_nan=False)
                    yield f"id: {seq}\nevent: {ev['kind']}\ndata: {data}\n\n".encode()
                if batch:
                    continue
                state = (await asyncio.to_thread(svc().store.get, job_id) or {}).get("state")
                if not follow or state in TERMINAL:
                    rest = await asyncio.to_thread(svc().store.events, job_id, seq)
                    if rest:
                        continue
                    yield f"event: end\ndata: {json.dumps({'state': state})}\n\n".encode()
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})  # fmt: skip

    # ------------------------------------------------------------ results

    RunName = PathParam(..., min_length=1, max_length=128, description="a run under the root")

    def data(run: str):
        return svc().results.get(R.run_path(svc().root, run))

    @app.get("/v1/runs", response_model=Page, tags=["results"])
    def list_runs() -> dict[str, Any]:
        items = R.list_runs(svc().root)
        return {"items": items, "total": len(items), "offset": 0, "limit": len(items)}

    @app.get("/v1/runs/{run}", tags=["results"])
    def run_meta(run: str = RunName) -> dict[str, Any]:
        d = data(run)
        from neuroscribe.rundir import RunDir

        return {
            "meta": d.meta().model_dump(mode="json"),
            "summary": RunDir(d.run.path).summary(),
            "open_failures": len(d.run.open_failures()),
            "active_job": (active_job(run) or {}).get("id"),
        }

    Offset = Query(0, ge=0, le=10**9)
    Limit = Query(100, ge=1, le=MAX_LIMIT)
    Layer = Query(None, max_length=100)
    Text = Query(None, max_length=500, description="case-insensitive substring")
    Unit = Query(None, max_length=1000)
    MinScore = Query(None, ge=-1e6, le=1e6)
    MaxScore = Query(None, ge=-1e6, le=1e6)

    @app.get("/v1/runs/{run}/units", response_model=Page, tags=["results"])
    def units(run: str = RunName, offset: int = Offset, limit: int = Limit,
              layer: str | None = Layer, q: str | None = Text,
              min_score: float | None = MinScore, max_score: float | None = MaxScore,
              sort: str = Query("unit", pattern="^(unit|score)$")) -> dict[str, Any]:  # fmt: skip
        rows = R.query_units(data(run), layer=layer, q=q, min_score=min_score,
                             max_score=max_score, sort=sort)  # fmt: skip
        return R.page(rows, offset, limit)

    @app.get("/v1/runs/{run}/units/{unit_id:path}", tags=["results"])
    def unit(run: str = RunName, unit_id: str = PathParam(..., max_length=1000)) -> dict[str, Any]:
        d = data(run)
        if unit_id not in d:
            raise R.NotFound(f"no unit {unit_id[:200]!r} in run {run!r}")
        return d.detail(unit_id).model_dump(mode="json")

    @app.get("/v1/runs/{run}/explanations", response_model=Page, tags=["results"])
    def explanations(run: str = RunName, offset: int = Offset, limit: int = Limit,
                     unit: str | None = Unit, layer: str | None = Layer, q: str | None = Text,
                     min_score: float | None = MinScore,
                     max_score: float | None = MaxScore) -> dict[str, Any]:  # fmt: skip
        rows = R.query_explanations(data(run), unit=unit, layer=layer, q=q,
                                    min_score=min_score, max_score=max_score)  # fmt: skip
        return R.page(rows, offset, limit)

    @app.get("/v1/runs/{run}/scores", response_model=Page, tags=["results"])
    def scores(run: str = RunName, offset: int = Offset, limit: int = Limit,
               unit: str | None = Unit, layer: str | None = Layer,
               scorer: str | None = Query(None, max_length=100),
               min_score: float | None = MinScore,
               max_score: float | None = MaxScore) -> dict[str, Any]:  # fmt: skip
        rows = R.query_scores(data(run), unit=unit, layer=layer, scorer=scorer,
                              min_score=min_score, max_score=max_score)  # fmt: skip
        return R.page(rows, offset, limit)

    @app.get("/v1/runs/{run}/failures", response_model=Page, tags=["results"])
    def failures(run: str = RunName, offset: int = Offset, limit: int = Limit,
                 unit: str | None = Unit, stage: str | None = Query(None, max_length=50),
                 all: bool = Query(False, description="also failures resolved later")
                 ) -> dict[str, Any]:  # fmt: skip
        return R.page(R.query_failures(data(run), unit=unit, stage=stage, all_=all), offset, limit)

    # ------------------------------------------------------------ single calls

    async def on_scheduler(fn: Any, timeout: float) -> Any:
        fut = svc().scheduler.call(fn, timeout)
        return await asyncio.wrap_future(fut)

    @app.post("/v1/explain", response_model=ExplainResponse, tags=["calls"])
    async def explain(body: ExplainRequest) -> dict[str, Any]:
        """Explain one unit from posted top-activating excerpts (nothing is stored)."""
        return await on_scheduler(lambda: calls.explain(svc().scheduler, body), body.timeout)

    @app.post("/v1/simulate", response_model=SimulateResponse, tags=["calls"])
    async def simulate(body: SimulateRequest) -> dict[str, Any]:
        """Simulate an explanation on posted excerpts: expected activation per token."""
        return await on_scheduler(lambda: calls.simulate(svc().scheduler, body), body.timeout)

    @app.post("/v1/score", response_model=ScoreResponse, tags=["calls"])
    async def score(body: ScoreRequest) -> dict[str, Any]:
        """Score an explanation on posted excerpts with their true activations."""
        return await on_scheduler(lambda: calls.score(svc().scheduler, body), body.timeout)

    # ------------------------------------------------------------ browser UI

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        from neuroscribe.simulator import STRATEGIES

        strategies = ["auto", *[s for s in STRATEGIES if s != "auto"]]
        return HTMLResponse(jobs_page(strategies), headers={"content-security-policy": jobs_csp()})

    @app.get("/runs/{run}", include_in_schema=False)
    def report_redirect(run: str = RunName) -> RedirectResponse:
        R.run_path(svc().root, run)
        return RedirectResponse(f"/runs/{run}/", status_code=307)

    @app.get("/runs/{run}/", include_in_schema=False)
    def report(run: str = RunName) -> HTMLResponse:
        from neuroscribe.view.page import content_security_policy, render_page

        R.run_path(svc().root, run)
        return HTMLResponse(
            render_page(f"neuroscribe · {run}", None),
            headers={"content-security-policy": content_security_policy(server=True)},
        )

    @app.get("/runs/{run}/api/units", include_in_schema=False)
    def report_units(run: str = RunName) -> dict[str, Any]:
        d = data(run)
        return {"meta": d.meta().model_dump(mode="json"),
                "units": [s.model_dump(mode="json") for s in d.summaries()]}  # fmt: skip

    @app.get("/runs/{run}/api/unit", include_in_schema=False)
    def report_unit(run: str = RunName, id: str = Query(..., max_length=1000)) -> dict[str, Any]:
        d = data(run)
        if id not in d:
            raise R.NotFound(f"no unit {id[:200]!r} in this run")
        return d.detail(id).model_dump(mode="json")

    return app


# ---------------------------------------------------------------- serving


def serve(cfg: ServiceConfig, announce: Any = print) -> None:
    """Run the service with uvicorn until Ctrl-C / SIGTERM (jobs then stay queued)."""
    import socket

    import uvicorn

    check_bind(cfg.host, cfg.token)
    service = Service(cfg)  # the root's lock and the store first: a clear error, not a trace
    try:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        # IPPROTO_TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say TCP;
        # without it every small response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host.strip("[]"), cfg.port))
        except OSError as e:
            sock.close()
            why = (
                "is already in use"
                if e.errno == errno.EADDRINUSE
                else f"cannot be used ({e.strerror})"
            )
            if e.errno == errno.EACCES:
                why = "needs privileges (ports below 1024 usually do)"
            raise ConfigError(
                f"--port {cfg.port} on {cfg.host} {why}; pick another port, or --port 0 for a free one"
            ) from None
        port = sock.getsockname()[1]
        app = create_app(cfg, service)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=10)  # fmt: skip
        server = uvicorn.Server(config)
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        announce(f"neuroscribe service on http://{shown}:{port}/ (root {service.root}; "
                 f"API http://{shown}:{port}/v1/, OpenAPI /v1/openapi.json; Ctrl-C to stop)")  # fmt: skip
        server.run(sockets=[sock])
    finally:
        if not service.started:
            service.close()
