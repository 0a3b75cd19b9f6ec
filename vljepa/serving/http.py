"""``vljepa serve``: an HTTP server for a VL-JEPA, with dynamic batching across clients.

    vljepa serve checkpoints/vljepa-easyvqa-lite0            # http://127.0.0.1:8000
    vljepa serve onnx-dir/                                   # an ONNX export: no torch

Endpoints (JSON in, JSON out; images are base64 data URLs ``data:image/png;base64,...``, or
bare base64, or ``{"image": ...}`` items):

    POST /v1/embeddings  OpenAI-compatible: {"input": str | [str | image, ...], "model",
                         "encoding_format": "float" | "base64"} -> {"object": "list",
                         "data": [{"object": "embedding", "index", "embedding"}], "model",
                         "usage": {"prompt_tokens", "total_tokens"}}. Texts go through the
                         Y-encoder (embed_text), images through the query-free prediction
                         (embed_image); one unit vector (D float32) each.
    POST /v1/answer      {"image" | "images", "question" | "questions", "candidates"?, "top_k"?}
                         -> data[i]: {"answer", "score" (cosine), "top_k": [{"answer", "score"}]}
    POST /v1/classify    {"image" | "images", "labels", "templates"?, "top_k"?} -> data[i]:
                         {"label", "probabilities" (aligned with labels), "top_k"}
    POST /v1/predict     {"image" | "images", "question" | "questions", "encoding_format"?}
                         -> data[i]: {"embedding"} (Ŝ_Y, unit norm)
    GET  /health         {"status": "ok", "model", "backend", ...} (no API key needed)
    GET  /v1/models      OpenAI's model list (one model)
    GET  /metrics        Prometheus: requests, latency, batch sizes, queue, peak RSS

Requests are gathered into batches of at most ``max_batch_size`` items, waiting at most
``max_wait_ms`` after the first, and run one batch at a time on one inference thread (each kind
of work: image embeddings, predictions, text embeddings, as one call). A batch that fails is
rerun request by request, so one bad request cannot fail the others. Every bad request gets a
4xx with an OpenAI-style JSON error ``{"error": {"message", "type", "param", "code"}}`` naming
the problem; the server keeps serving. SIGTERM (or Ctrl+C) stops accepting connections, lets
the requests in flight finish, and exits with status 0.

Imports Starlette, uvicorn, prometheus_client, numpy and PIL; torch only when the model is a
torch model (``load_backend``), so an ONNX export is served without torch.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import resource
import signal
import socket
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from ..version import __version__
from .backend import Backend, InputError, decode_image, image_bytes, softmax

log = logging.getLogger("vljepa.serve")

ONNX_CONFIG_NAME = "onnx.json"  # an ONNX export's metadata (vljepa.serving.onnx_export)


@dataclass
class ServeConfig:
    """The server's settings (``vljepa serve --help`` sets each).

    Attributes:
        host: interface to bind (default 127.0.0.1: this machine only).
        port: TCP port (0: a free one, printed at start).
        model_name: the model id clients see (``/v1/models``, the ``model`` field); a request
            naming another model gets 404.
        api_key: when set, every endpoint but ``/health`` needs ``Authorization: Bearer KEY``
            (or ``X-API-Key: KEY``); 401 without it.
        max_batch_size: items (images, texts) per batch.
        max_wait_ms: how long a batch waits for more items after its first, in ms.
        max_request_bytes: the largest request body, in bytes (413 over it).
        max_image_pixels: the largest image, width x height (413 over it).
        max_items: the most images or texts in one request (400 over it).
        max_text_chars: the longest text or question, in characters (400 over it).
        timeout_s: a request's limit from its arrival, in seconds (504 past it).
        max_queue_items: items waiting for a batch; past it requests get 503 (Retry-After).
        drain_timeout_s: on SIGTERM, how long requests in flight may take to finish, in s.
        log_level: uvicorn's log level ("warning": no access log).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "vljepa"
    api_key: str | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_request_bytes: int = 16 * 2 ** 20
    max_image_pixels: int = 4096 * 4096
    max_items: int = 256
    max_text_chars: int = 4096
    timeout_s: float = 30.0
    max_queue_items: int = 4096
    drain_timeout_s: float = 60.0
    log_level: str = "warning"

    def check(self) -> ServeConfig:
        """Raise ValueError naming a setting out of range; return self."""
        for name in ("max_batch_size", "max_request_bytes", "max_image_pixels", "max_items",
                     "max_text_chars", "max_queue_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "timeout_s", "drain_timeout_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
        return self


class ApiError(Exception):
    """An error response: ``status`` and the OpenAI-style body ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    @classmethod
    def from_input(cls, e: InputError) -> ApiError:
        return cls(e.status, str(e), param=e.param, code=e.code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# ---- metrics ----

class Metrics:
    """The server's Prometheus metrics, in a registry of their own (several apps can live in
    one process, as in tests)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = r = CollectorRegistry()
        self.requests = Counter("vljepa_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "vljepa_request_duration_seconds", "Request latency by endpoint, in seconds",
            ["endpoint"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch_size = Histogram("vljepa_batch_size", "Items per inference batch, by kind",
                                    ["kind"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_latency = Histogram(
            "vljepa_batch_duration_seconds", "Inference time per batch, by kind, in seconds",
            ["kind"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.queue = Gauge("vljepa_queue_items", "Items waiting for a batch", registry=r)
        self.in_flight = Gauge("vljepa_requests_in_flight", "Requests being served", registry=r)
        self.items = Counter("vljepa_items", "Images and texts processed, by kind", ["kind"],
                             registry=r)
        peak = Gauge("vljepa_peak_rss_mebibytes", "Peak resident memory of the server process, "
                     "in MiB", registry=r)
        peak.set_function(peak_rss_mib)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: Linux's ``VmHWM`` (the high-water mark of
    this program's own memory), else ``ru_maxrss`` / 1024 (:func:`vljepa.profiling.peak_rss_mib`,
    which imports the ``vljepa`` package). ``ru_maxrss`` is not used on Linux because it keeps
    the memory of the process that forked the server (e.g. a test runner with torch loaded)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- dynamic batching ----

class _Job:
    __slots__ = ("op", "items", "future", "queued_at")

    def __init__(self, op: str, items: list, future: asyncio.Future, queued_at: float):
        self.op, self.items, self.future, self.queued_at = op, items, future, queued_at


class Batcher:
    """Gathers the work of concurrent requests into batches for one inference thread.

    Work is submitted as a kind ("image": pixels (3, H, W) -> embed_images; "predict":
    (pixels, question) -> predict; "text": str -> embed_texts) and a list of items; a request's
    items stay together in one batch. A batch starts when it holds ``max_batch_size`` items or
    ``max_wait_ms`` after its first item arrived; batches run one at a time, and the requests
    that arrive meanwhile form the next one. A batch does not wait when every request being
    served already has its work queued (``active``): a lone client pays no batching delay.

    Args:
        backend: the model.
        config: ``max_batch_size``, ``max_wait_ms``, ``max_queue_items``.
        metrics: where batch sizes and times go.
        active: the number of requests being served (None: always wait up to max_wait_ms).
    """

    OPS = ("image", "predict", "text")

    def __init__(self, backend: Backend, config: ServeConfig, metrics: Metrics,
                 active: Callable[[], int] | None = None):
        self.backend, self.config, self.metrics = backend, config, metrics
        self.active = active  # requests being served, or None: always wait max_wait_ms
        self.pending: deque[_Job] = deque()
        self.pending_items = 0
        self._wakeup: asyncio.Event | None = None
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vljepa-inference")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="vljepa-batcher")

    async def stop(self) -> None:
        """Finish the work already submitted, then stop."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, op: str, items: list) -> list:
        """Queue ``items`` of kind ``op``; return their results in order (a row (D,) float32
        each). Raises ApiError 503 when the queue is full, or what the backend raised."""
        if op not in self.OPS:
            raise ValueError(f"unknown kind of work {op!r}")
        if not items:
            return []
        if self.pending_items + len(items) > self.config.max_queue_items:
            raise ApiError(503, f"the server is busy ({self.pending_items} items queued, the "
                           f"limit is {self.config.max_queue_items}); retry later",
                           "server_busy", headers={"Retry-After": "1"})
        if self._closing or self._task is None or self._task.done():
            raise ApiError(503, "the server is shutting down", "server_busy")
        future = self._loop.create_future()
        self.pending.append(_Job(op, list(items), future, self._loop.time()))
        self.pending_items += len(items)
        self.metrics.queue.set(self.pending_items)
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        cfg, loop = self.config, self._loop
        while True:
            while not self.pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait for the batch to fill, up to max_wait after its first item arrived
            deadline = self.pending[0].queued_at + cfg.max_wait_ms / 1000
            while self.pending_items < cfg.max_batch_size and not self._closing:
                if self.active is not None and self.active() <= len(self.pending):
                    break  # no other request is on its way
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            jobs, n = [], 0
            while self.pending and (not jobs or n + len(self.pending[0].items) <= cfg.max_batch_size):
                job = self.pending.popleft()
                n += len(job.items)
                jobs.append(job)
            self.pending_items -= n
            self.metrics.queue.set(self.pending_items)
            jobs = [j for j in jobs if not j.future.done()]  # timed out or disconnected
            if not jobs:
                continue
            results = await loop.run_in_executor(self._executor, self._work, jobs)
            for job, (ok, value) in zip(jobs, results):
                if not job.future.done():
                    (job.future.set_result if ok else job.future.set_exception)(value)

    def _work(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """On the inference thread: each kind of work in the batch as one call; a call that
        fails is rerun job by job, so that only the job at fault gets the error."""
        out: list[tuple[bool, Any]] = [(False, RuntimeError("not run"))] * len(jobs)
        for op in self.OPS:
            idx = [i for i, j in enumerate(jobs) if j.op == op]
            if not idx:
                continue
            try:
                rows = self._call(op, [x for i in idx for x in jobs[i].items])
                start = 0
                for i in idx:
                    k = len(jobs[i].items)
                    out[i] = (True, rows[start:start + k])
                    start += k
            except Exception as e:  # noqa: BLE001 - isolate the job at fault
                if len(idx) == 1:
                    out[idx[0]] = (False, e)
                    continue
                for i in idx:
                    try:
                        out[i] = (True, self._call(op, jobs[i].items))
                    except Exception as e1:  # noqa: BLE001
                        out[i] = (False, e1)
        return out

    def _call(self, op: str, items: list) -> np.ndarray:
        b, size = self.backend, self.config.max_batch_size
        parts = []
        for s in range(0, len(items), size):
            chunk = items[s:s + size]
            t = time.perf_counter()
            if op == "image":
                parts.append(b.embed_images(np.stack(chunk)))
            elif op == "predict":
                parts.append(b.predict(np.stack([p for p, _ in chunk]), [q for _, q in chunk]))
            else:
                parts.append(b.embed_texts(chunk))
            self.metrics.batch_latency.labels(op).observe(time.perf_counter() - t)
            self.metrics.batch_size.labels(op).observe(len(chunk))
            self.metrics.items.labels(op).inc(len(chunk))
        return np.concatenate(parts).astype(np.float32, copy=False)


# ---- request parsing ----

def _check_fields(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; this endpoint takes "
                            f"{sorted(allowed)}", param=unknown[0])


def _text(value: Any, param: str, cfg: ServeConfig) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{param} must be a string, got {type(value).__name__}", param=param)
    if not value.strip():
        raise ApiError(400, f"{param} is empty", param=param)
    if len(value) > cfg.max_text_chars:
        raise ApiError(400, f"{param} has {len(value)} characters, over the limit of "
                            f"{cfg.max_text_chars}", param=param)
    return value


def _texts(value: Any, param: str, cfg: ServeConfig, min_items: int = 1) -> list[str]:
    if not isinstance(value, list):
        raise ApiError(400, f"{param} must be a list of strings, got {type(value).__name__}",
                       param=param)
    if len(value) < min_items:
        raise ApiError(400, f"{param} is empty", param=param)
    if len(value) > cfg.max_items:
        raise ApiError(400, f"{param} has {len(value)} items, over the limit of "
                            f"{cfg.max_items}", param=param)
    return [_text(v, f"{param}[{i}]", cfg) for i, v in enumerate(value)]


def _int(body: dict, name: str, default: int, low: int, high: int | None = None) -> int:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{name} must be an integer, got {type(v).__name__}", param=name)
    if v < low or (high is not None and v > high):
        raise ApiError(400, f"{name} must be in {low}..{high if high is not None else 'inf'}, "
                            f"got {v}", param=name)
    return v


def _encoding(body: dict) -> str:
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        return "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}",
                       param="encoding_format")
    return fmt


def _encode(row: np.ndarray, fmt: str) -> np.ndarray | str:
    """A float32 row as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    if fmt == "base64":
        return base64.b64encode(np.asarray(row, "<f4").tobytes()).decode("ascii")
    return np.asarray(row, np.float32)  # written as a JSON list of numbers (see _json_bytes)


def _json_bytes(out: dict) -> bytes:
    """A response as JSON bytes, embeddings (float32 arrays) as lists of numbers. orjson (the
    ``serve`` extra) writes each as the shortest decimal that reads back as the same float32,
    ~15x faster than the json module (measured: 8 vs 128 us for one 256-d embedding); without
    orjson the json module writes them as float64 decimals of the same values."""
    try:
        import orjson
    except ImportError:
        return json.dumps(out, default=lambda a: a.tolist()).encode()
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)


def _images(body: dict, cfg: ServeConfig) -> list[tuple[Any, str]]:
    """``image`` (one) or ``images`` (a list) -> the raw images with their field names."""
    if ("image" in body) == ("images" in body):
        raise ApiError(400, "give exactly one of 'image' (one image) or 'images' (a list)",
                       param="image")
    if "image" in body:
        return [(body["image"], "image")]
    raw = body["images"]
    if not isinstance(raw, list):
        raise ApiError(400, f"images must be a list, got {type(raw).__name__}", param="images")
    if not raw:
        raise ApiError(400, "images is empty", param="images")
    if len(raw) > cfg.max_items:
        raise ApiError(400, f"images has {len(raw)} items, over the limit of {cfg.max_items}",
                       param="images")
    return [(v, f"images[{i}]") for i, v in enumerate(raw)]


def _inline_size(value: Any) -> int:
    """Characters of an image as sent (a string, or an {"image": ...} / {"image_url": ...}
    item holding one); 1 MiB for anything else, which then decodes off the event loop."""
    if isinstance(value, dict):
        inner = value.get("image", value.get("image_url"))
        inner = inner.get("url") if isinstance(inner, dict) else inner
        return len(inner) if isinstance(inner, str) else 1 << 20
    return len(value) if isinstance(value, str) else 1 << 20


def _questions(body: dict, cfg: ServeConfig, n: int) -> list[str]:
    """``question`` (one for every image) or ``questions`` (one per image) -> n questions."""
    if "question" in body and "questions" in body:
        raise ApiError(400, "give 'question' (one for every image) or 'questions' (one per "
                            "image), not both", param="question")
    if "question" in body:
        return [_text(body["question"], "question", cfg)] * n
    if "questions" in body:
        texts = _texts(body["questions"], "questions", cfg)
        if len(texts) != n:
            raise ApiError(400, f"{n} images but {len(texts)} questions", param="questions")
        return texts
    raise ApiError(400, "'question' is required", param="question")


# ---- the app ----

class Server:
    """The ASGI app of one model (Starlette routes under an auth / metrics layer).

    Args:
        backend: the model (:func:`load_backend`).
        config: the settings.
    """

    INLINE_DECODE_CHARS = 32_768  # base64 images up to this, in all, decode on the event loop
    ROUTES = ("/v1/embeddings", "/v1/answer", "/v1/classify", "/v1/predict", "/health",
              "/v1/models", "/metrics")

    def __init__(self, backend: Backend, config: ServeConfig):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        self.backend, self.config = backend, config.check()
        self.metrics = Metrics()
        self.active_requests = 0  # in the POST endpoints, from parsing to the response
        self.batcher = Batcher(backend, config, self.metrics, lambda: self.active_requests)
        self.started = time.time()
        self._default_candidates: np.ndarray | None = None
        self.ready: Callable[[], None] | None = None  # called once the app has started
        post = {"/v1/embeddings": self.embeddings, "/v1/answer": self.answer,
                "/v1/classify": self.classify, "/v1/predict": self.predict}
        routes = [Route(p, self._endpoint(f), methods=["POST"]) for p, f in post.items()]
        routes += [Route("/health", self._endpoint(self.health), methods=["GET"]),
                   Route("/v1/models", self._endpoint(self.models), methods=["GET"]),
                   Route("/v1/models/{model_id:path}", self._endpoint(self.model_info),
                         methods=["GET"]),
                   Route("/metrics", self.metrics_endpoint, methods=["GET"])]

        async def http_error(request, exc: HTTPException):
            status = exc.status_code
            msg = {404: f"no endpoint {request.url.path}; see {list(self.ROUTES)}",
                   405: f"{request.method} is not allowed on {request.url.path}"
                   }.get(status, str(exc.detail))
            return self._error(ApiError(status, msg, code={404: "not_found",
                                                           405: "method_not_allowed"}.get(status)))

        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             exception_handlers={HTTPException: http_error})

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        await self.batcher.start()
        if self.ready is not None:
            self.ready()
        try:
            yield
        finally:
            await self.batcher.stop()

    # ---- the ASGI layer: API key, metrics ----

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.ROUTES else (
            "/v1/models" if path.startswith("/v1/models/") else "other")
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            if self.config.api_key and path != "/health" and not self._authorized(scope):
                return await self._send_error(send_status, ApiError(
                    401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"}))
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t)

    def _authorized(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        key = self.config.api_key.encode()
        auth = headers.get(b"authorization", b"")
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return hmac.compare_digest(given, key)

    async def _send_error(self, send, e: ApiError) -> None:
        body = json.dumps(e.body()).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()]
        await send({"type": "http.response.start", "status": e.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _error(self, e: ApiError):
        from starlette.responses import JSONResponse
        return JSONResponse(e.body(), e.status, headers=e.headers)

    def _endpoint(self, handler: Callable[[Any], Awaitable[dict]]):
        from starlette.responses import Response

        async def endpoint(request):
            self.active_requests += 1
            try:
                out = await handler(request)
            except ApiError as e:
                return self._error(e)
            except InputError as e:
                return self._error(ApiError.from_input(e))
            except Exception as e:  # noqa: BLE001 - a JSON 500, and the server goes on
                log.exception("error serving %s", request.url.path)
                return self._error(ApiError(500, f"internal error: {type(e).__name__}: {e}",
                                            "server_error"))
            finally:
                self.active_requests -= 1
            return Response(_json_bytes(out), media_type="application/json")
        return endpoint

    async def _body(self, request) -> dict:
        """The request's JSON object; ApiError 413 over the size limit, 400 when malformed."""
        limit = self.config.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise ApiError(400, f"bad Content-Length {length!r}")
        # a body over the limit is read (and dropped) up to 4x the limit, so that the client,
        # still sending, gets the 413 rather than a reset connection; a larger one is cut off
        cap = max(limit, min(4 * limit, 64 * 2 ** 20))
        if length is not None and int(length) > cap:
            raise self._too_large(length, limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                break
            if size <= limit:
                chunks.append(chunk)
        if size > limit:
            raise self._too_large(length, limit)
        raw = b"".join(chunks)
        if not raw.strip():
            raise ApiError(400, "the request body is empty: send a JSON object")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"the request body must be a JSON object, got "
                                f"{type(body).__name__}")
        model = body.get("model")
        if model is not None:
            if not isinstance(model, str):
                raise ApiError(400, f"model must be a string, got {type(model).__name__}",
                               param="model")
            if model != self.config.model_name:
                raise ApiError(404, f"the model {model!r} does not exist; this server serves "
                                    f"{self.config.model_name!r}", param="model",
                               code="model_not_found")
        return body

    @staticmethod
    def _too_large(length: str | None, limit: int) -> ApiError:
        size = f"{length} bytes" if length is not None else f"over {limit} bytes"
        return ApiError(413, f"the request body is {size}, over the limit of {limit} bytes",
                        code="request_too_large")

    async def _deadline(self, coro: Awaitable):
        try:
            return await asyncio.wait_for(coro, self.config.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than the server's limit of "
                                f"{self.config.timeout_s:g} s", "timeout",
                           code="timeout") from None

    async def _pixels(self, images: list[tuple[Any, str]]) -> list[np.ndarray]:
        """Decode and preprocess images off the event loop; InputError names the bad one."""
        max_pixels, b = self.config.max_image_pixels, self.backend

        def work() -> list[np.ndarray]:
            return [b.preprocess(decode_image(*image_bytes(v, p), max_pixels))
                    for v, p in images]
        size = sum(_inline_size(v) for v, _ in images)
        if size <= self.INLINE_DECODE_CHARS:  # a few small images: no thread hand-off
            return work()
        return await asyncio.to_thread(work)

    # ---- endpoints ----

    async def embeddings(self, request) -> dict:
        body = await self._body(request)
        _check_fields(body, {"model", "input", "encoding_format", "dimensions", "user"})
        if "input" not in body:
            raise ApiError(400, "'input' is required: a string, or a list of strings and images",
                           param="input")
        fmt = _encoding(body)
        raw = body["input"]
        items = [raw] if isinstance(raw, (str, dict)) else raw
        if not isinstance(items, list):
            raise ApiError(400, f"input must be a string or a list, got {type(raw).__name__}",
                           param="input")
        if not items:
            raise ApiError(400, "input is empty", param="input")
        if len(items) > self.config.max_items:
            raise ApiError(400, f"input has {len(items)} items, over the limit of "
                                f"{self.config.max_items}", param="input")
        dims = body.get("dimensions")
        if dims is not None and dims != self.backend.embed_dim:
            raise ApiError(400, f"dimensions must be {self.backend.embed_dim} (this model's "
                                f"width) or absent, got {dims!r}", param="dimensions")
        texts, images = [], []  # (position, value, param)
        for i, x in enumerate(items):
            p = f"input[{i}]" if isinstance(raw, list) else "input"
            if isinstance(x, str) and x[:11].lower() == "data:image/":
                images.append((i, x, p))
            elif isinstance(x, str):
                texts.append((i, _text(x, p, self.config), p))
            elif isinstance(x, dict) and set(x) == {"text"}:
                texts.append((i, _text(x["text"], f"{p}.text", self.config), f"{p}.text"))
            elif isinstance(x, dict):
                images.append((i, x, p))
            elif isinstance(x, (int, list)) and not isinstance(x, bool):
                raise ApiError(400, f"{p}: token ids are not accepted; send the text itself",
                               param=p)
            else:
                raise ApiError(400, f"{p} must be a string, a data URL or an {{'image': ...}} "
                                    f"item, got {type(x).__name__}", param=p)
        self.backend.check_texts([t for _, t, _ in texts], "input")

        async def run():
            pixels = await self._pixels([(v, p) for _, v, p in images])
            return await asyncio.gather(self.batcher.submit("text", [t for _, t, _ in texts]),
                                        self.batcher.submit("image", pixels))
        text_rows, image_rows = await self._deadline(run())
        rows: list[Any] = [None] * len(items)
        for (i, _, _), r in zip(texts, text_rows):
            rows[i] = r
        for (i, _, _), r in zip(images, image_rows):
            rows[i] = r
        # counted here, not on the inference thread: a hop there would wait for a whole batch
        tokens = sum(self.backend.count_tokens([t for _, t, _ in texts])) if texts else 0
        return {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": _encode(r, fmt)}
                         for i, r in enumerate(rows)],
                "model": self.config.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def answer(self, request) -> dict:
        body = await self._body(request)
        _check_fields(body, {"model", "image", "images", "question", "questions", "candidates",
                             "top_k"})
        images = _images(body, self.config)
        questions = _questions(body, self.config, len(images))
        candidates = body.get("candidates")
        if candidates is not None:
            candidates = _texts(candidates, "candidates", self.config)
            self.backend.check_texts(candidates, "candidates")
        elif not self.backend.candidates:
            raise ApiError(400, "this model has no saved candidate answers: pass 'candidates'",
                           param="candidates")
        n_cand = len(candidates or self.backend.candidates)
        top_k = _int(body, "top_k", min(5, n_cand), 1, n_cand)
        self.backend.check_questions(questions)

        async def run():
            pixels = await self._pixels(images)
            pred, cand = await asyncio.gather(
                self.batcher.submit("predict", list(zip(pixels, questions))),
                self._candidate_rows(candidates))
            return np.stack(pred), cand
        pred, cand = await self._deadline(run())
        names = candidates or self.backend.candidates
        sims = pred @ cand.T  # (B, C) cosines
        order = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
        data = []
        for i, (q, row, best) in enumerate(zip(questions, sims, order)):
            data.append({"index": i, "question": q, "answer": names[best[0]],
                         "score": float(row[best[0]]),
                         "top_k": [{"answer": names[j], "score": float(row[j])} for j in best]})
        return {"object": "list", "model": self.config.model_name, "data": data}

    async def _candidate_rows(self, candidates: list[str] | None) -> np.ndarray:
        """S_Y of ``candidates`` (C, D); None: the model's saved candidates, embedded once."""
        if candidates is not None:
            return np.stack(await self.batcher.submit("text", candidates))
        if self._default_candidates is None:
            self._default_candidates = np.stack(
                await self.batcher.submit("text", self.backend.candidates))
        return self._default_candidates

    async def classify(self, request) -> dict:
        body = await self._body(request)
        _check_fields(body, {"model", "image", "images", "labels", "templates", "top_k"})
        images = _images(body, self.config)
        if "labels" not in body:
            raise ApiError(400, "'labels' is required: a list of class names", param="labels")
        labels = _texts(body["labels"], "labels", self.config)
        templates = body.get("templates")
        templates = ["{}"] if templates is None else _texts(templates, "templates", self.config)
        for i, t in enumerate(templates):
            if "{}" not in t:
                raise ApiError(400, f"templates[{i}] needs a '{{}}' slot for the label, got "
                                    f"{t!r}", param=f"templates[{i}]")
        if len(labels) * len(templates) > self.config.max_items:
            raise ApiError(400, f"{len(labels)} labels x {len(templates)} templates = "
                                f"{len(labels) * len(templates)} texts, over the limit of "
                                f"{self.config.max_items}", param="labels")
        top_k = _int(body, "top_k", min(5, len(labels)), 1, len(labels))
        prompts = [t.replace("{}", c) for c in labels for t in templates]
        self.backend.check_texts(prompts, "labels")

        async def run():
            pixels = await self._pixels(images)
            text, z = await asyncio.gather(self.batcher.submit("text", prompts),
                                           self.batcher.submit("image", pixels))
            return np.stack(text), np.stack(z)
        text, z = await self._deadline(run())
        w = text.reshape(len(labels), len(templates), -1).mean(1)
        w = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-12)
        probs = softmax(np.float32(self.backend.logit_scale) * (z @ w.T))  # (B, C)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        data = [{"index": i, "label": labels[best[0]],
                 "probabilities": [float(p) for p in row],
                 "top_k": [{"label": labels[j], "probability": float(row[j])} for j in best]}
                for i, (row, best) in enumerate(zip(probs, order))]
        return {"object": "list", "model": self.config.model_name, "labels": labels,
                "data": data}

    async def predict(self, request) -> dict:
        body = await self._body(request)
        _check_fields(body, {"model", "image", "images", "question", "questions",
                             "encoding_format"})
        fmt = _encoding(body)
        images = _images(body, self.config)
        questions = _questions(body, self.config, len(images))
        self.backend.check_questions(questions)

        async def run():
            pixels = await self._pixels(images)
            return await self.batcher.submit("predict", list(zip(pixels, questions)))
        rows = await self._deadline(run())
        return {"object": "list", "model": self.config.model_name,
                "data": [{"object": "embedding", "index": i, "question": q,
                          "embedding": _encode(r, fmt)}
                         for i, (q, r) in enumerate(zip(questions, rows))]}

    async def health(self, request) -> dict:
        return {"status": "ok", "model": self.config.model_name, "version": __version__,
                **self.backend.describe(),
                "max_batch_size": self.config.max_batch_size,
                "queue_items": self.batcher.pending_items,
                "uptime_s": round(time.time() - self.started, 3),
                "peak_rss_mib": round(peak_rss_mib(), 1),
                "torch_imported": "torch" in sys.modules}

    def _model_card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": int(self.started),
                "owned_by": "vljepa", **self.backend.describe()}

    async def models(self, request) -> dict:
        return {"object": "list", "data": [self._model_card()]}

    async def model_info(self, request) -> dict:
        model_id = request.path_params["model_id"]
        if model_id != self.config.model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server serves "
                                f"{self.config.model_name!r}", code="model_not_found")
        return self._model_card()

    async def metrics_endpoint(self, request):
        from starlette.responses import Response
        data, content_type = self.metrics.exposition()
        return Response(data, headers={"Content-Type": content_type})


# ---- loading and running ----

def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``vljepa export-onnx``."""
    return (Path(path) / ONNX_CONFIG_NAME).is_file()


def load_backend(model: str | os.PathLike, lean: bool = False, fallback: bool = False,
                 threads: int | None = None) -> Backend:
    """A model path -> the backend that serves it: an ONNX export (``onnx.json``) runs on
    onnxruntime without torch; anything else is read by ``vljepa.load`` (a saved model,
    ``.ckpt`` or hub id; ``lean=True``: a serving bundle, ``fallback`` as
    :func:`vljepa.serving.load_serving`).

    ``threads``: the model's intra-op threads (torch's ``set_num_threads``, for the whole
    process, or onnxruntime's); None: the library's default (one per core). On a machine whose
    cores are shared, 1 avoids waiting at every operation for a second thread to be scheduled.

    Raises:
        FileNotFoundError, ValueError: as ``vljepa.load`` / :class:`OnnxBackend`.
        TypeError: a model that is not a VL-JEPA.
    """
    if is_onnx_export(model):
        if lean or fallback:
            raise ValueError(f"{str(model)!r} is an ONNX export: --lean and --fallback go "
                             "with torch models")
        from .onnx_runtime import OnnxBackend
        return OnnxBackend(model, threads=threads)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import torch

    from ..factory import load
    from .torch_backend import TorchBackend
    if threads:
        torch.set_num_threads(threads)
    return TorchBackend(load(model, lean=lean, fallback=fallback))


def default_model_name(model: str | os.PathLike) -> str:
    """The model id clients see by default: the model directory's name (a file's stem; a hub
    id as given)."""
    p = Path(model)
    if p.is_dir():
        return p.resolve().name
    return p.stem if p.is_file() else str(model)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it each response waits for the client's delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(backend: Backend, config: ServeConfig,
          on_ready: Callable[[str], None] | None = None) -> int:
    """Run the server until SIGTERM / SIGINT, then drain: stop accepting connections, finish
    the requests in flight (at most ``drain_timeout_s``), stop the batcher. Returns 0.

    Args:
        on_ready: called with the base URL (``http://127.0.0.1:PORT``) once it serves; None
            prints "vljepa: serving MODEL at URL" on stderr.
    Raises:
        ValueError: a setting out of range, or the address cannot be bound.
    """
    import uvicorn

    server_app = Server(backend, config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def ready() -> None:
        if on_ready is not None:
            on_ready(url)
        else:
            print(f"vljepa: serving {config.model_name} ({backend.kind}) at {url}",
                  file=sys.stderr, flush=True)
    server_app.ready = ready
    uv_config = uvicorn.Config(server_app, log_level=config.log_level, access_log=False,
                               timeout_graceful_shutdown=config.drain_timeout_s,
                               timeout_keep_alive=30, lifespan="on", loop="auto",
                               http="auto", limit_concurrency=4096)
    server = uvicorn.Server(uv_config)
    # uvicorn re-raises the signal it stopped on once it has drained (so the process would die
    # of SIGTERM): handlers that ignore it make a graceful stop exit 0.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    if not server.started:
        raise RuntimeError("the server did not start (see the log above)")
    return 0
