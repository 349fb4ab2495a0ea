"""The Ray Serve application: an HTTP ingress in front of generator replicas that batch across requests.

Two deployments, one job each:

- `Ingress` (FastAPI, light: no graphs): parses and validates every request completely (`schema`; a bad
  request gets its 4xx here and never reaches a batch), calls a generator replica through a Serve
  handle, and answers JSON with base64 PNGs or one ``image/png``. Generation is deterministic, so a
  request whose replica died is retried on another one (``RETRIES`` times, with a short backoff) and
  gets the very same image; when that fails too, or every replica is at capacity and the handle's
  bounded queue is full, the client gets a 503 with one line saying which.
- `Generator` (one per CPU share or GPU): opens the package once; requests pass the admission `gate`
  into ``@serve.batch``, whose batches `batching.run_batch` runs in the replica's one model thread
  (its event loop stays free to take requests meanwhile). It returns PNG bytes.

Ray Serve does the rest: the proxy routes HTTP to the ingress and queues at most ``max_queued_requests``
(503 past that), the handle routes to the least-loaded generators, Serve restarts dead replicas,
and Ray exports Serve's metrics next to ours (``dartrt_*``).
"""

# No `from __future__ import annotations` here: FastAPI must see the route annotations (Request) as
# types, and Serve's class-based views hand it signatures it cannot resolve from strings.
import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics

import dartrt
from dartrt.runtime.cfg import SCHEDULES
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.orders import ORDER_NAMES
from dartrt.runtime.package import open_package_backend
from dartrt.runtime.precisions import list_precisions
from dartrt.runtime.scheduler import Request as RuntimeRequest

from .batching import Outcome, run_batch
from .codec import generate_answer, png_bytes
from .config import DEPLOYMENT_NAME, INGRESS_NAME, ServeConfig
from .errors import UNAVAILABLE, ServeError, status_of
from .gate import AdmissionGate
from .schema import check_precision, parse_body, to_request, wants_png

api = FastAPI(title="dartrt", version=dartrt.__version__,
              description="Class-conditional image generation from a dartrt package, batched across requests.")
# A generator whose batches fail this many times in a row reports itself unhealthy; Serve replaces it.
UNHEALTHY_AFTER = 3
# A request whose generator replica died is sent again this many times (same seed: the same image).
RETRIES = 3
RETRY_BACKOFF_S = (0.2, 0.5, 1.0)
REPLICA_LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError)


@dataclass
class Job:
    """A validated request on its way through a generator's gate and batch queue."""

    request: RuntimeRequest
    started: bool = False

    @property
    def images(self) -> int:
        return len(self.request.class_ids)


def images_in(jobs: list) -> int:
    """``@serve.batch``'s batch size: images, not requests (a request may carry several)."""
    return sum(job.images for job in jobs)


@dataclass
class Rendered:
    """A generator's answer to one request: PNG bytes, or the error that failed its batch group."""

    pngs: list = field(default_factory=list)
    error: str = ""
    batch_images: int = 0
    batch_requests: int = 0


@serve.deployment(name=DEPLOYMENT_NAME, graceful_shutdown_timeout_s=30, health_check_period_s=5)
class Generator:
    """One replica: the package's graphs, the admission gate and the batch queue."""

    def __init__(self, config: ServeConfig, threads) -> None:
        options = {} if config.backend == "tensorrt" or threads is None else {"intra_op_threads": threads}
        self.config = config
        self.backend = open_package_backend(config.package, config.backend, precision=config.precision, **options)
        self.precision = getattr(self.backend, "precision", None) or config.precision or "fp32"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dartrt-model")  # the backend is not thread-safe
        self._gate = AdmissionGate(config.max_batch)
        self._generate_batch.set_max_batch_size(config.max_batch)
        self._generate_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000.0)
        self._failed_batches = 0
        self._m_images = metrics.Counter("dartrt_images_generated", description="Images generated.",
                                         tag_keys=("model",))
        self._m_batch = metrics.Histogram("dartrt_batch_images", description="Images per batched forward.",
                                          boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("model",))
        self._m_waiting = metrics.Gauge("dartrt_gate_waiting_requests",
                                        description="Requests waiting for the running batch to end.",
                                        tag_keys=("model",))
        for metric in (self._m_images, self._m_batch, self._m_waiting):
            metric.set_default_tags({"model": self.backend.info.name})

    def describe(self) -> dict:
        """What the ingress reports and checks requests against: the backend and the precision it runs."""
        return {"backend": self.backend.name, "precision": self.precision}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=images_in)
    async def _generate_batch(self, jobs: list) -> list:
        images = images_in(jobs)
        for job in jobs:
            job.started = True
        self._gate.start(images)
        self._m_batch.observe(images)
        try:
            loop = asyncio.get_running_loop()
            outcomes = await loop.run_in_executor(self._pool, run_batch, self.backend,
                                                  [job.request for job in jobs], self.config.max_batch)
        finally:
            self._gate.finish()
            self._m_waiting.set(self._gate.waiting)
        failed = any(o.error is not None for o in outcomes)
        self._failed_batches = self._failed_batches + 1 if failed else 0
        return outcomes

    async def generate(self, request: RuntimeRequest) -> Rendered:
        """Through the gate into the batch queue, then PNG bytes. A request cancelled before its batch
        starts (client gone, proxy timeout) gives its place back."""
        job = Job(request)
        await self._gate.enter(job.images)
        self._m_waiting.set(self._gate.waiting)
        try:
            outcome: Outcome = await self._generate_batch(job)
        finally:
            if not job.started:
                self._gate.withdraw(job.images)
        if outcome.error is not None:
            return Rendered(error=outcome.error, batch_images=outcome.batch_images,
                            batch_requests=outcome.batch_requests)
        pngs = await asyncio.to_thread(lambda: [png_bytes(image) for image in outcome.images])
        self._m_images.inc(len(pngs))
        return Rendered(pngs, "", outcome.batch_images, outcome.batch_requests)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose batches keep failing gets replaced."""
        if self._failed_batches >= UNHEALTHY_AFTER:
            raise RuntimeError(f"the last {self._failed_batches} batches failed")


def error_response(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


@serve.deployment(name=INGRESS_NAME)
@serve.ingress(api)
class Ingress:
    """HTTP in, validated requests to the generators, PNGs out."""

    def __init__(self, config: ServeConfig, generator: DeploymentHandle) -> None:
        manifest = Manifest.read(config.package)
        self.config = config
        self.info = manifest.info
        self.precisions = tuple(list_precisions(manifest.data))
        self.generator = generator
        self._described: dict | None = None
        self._m_rejected = metrics.Counter("dartrt_requests_rejected", description="Requests refused, by status.",
                                           tag_keys=("model", "status"))
        self._m_retries = metrics.Counter("dartrt_replica_retries",
                                          description="Requests sent again after their generator replica died.",
                                          tag_keys=("model",))
        for metric in (self._m_rejected, self._m_retries):
            metric.set_default_tags({"model": self.info.name})

    async def _precision(self) -> str:
        """The precision served: known from the config, except TensorRT's best engine (asked once)."""
        return self.config.served_precision or (await self._describe())["precision"]

    async def _describe(self) -> dict:
        """The generators' backend and precision, asked once (retried like a request; 503 if none answers)."""
        if self._described is None:
            for attempt in range(RETRIES + 1):
                try:
                    self._described = await self.generator.describe.remote()
                    break
                except (*REPLICA_LOST, BackPressureError, DeploymentUnavailableError) as exc:
                    if attempt == RETRIES:
                        why = "it is at capacity" if isinstance(exc, BackPressureError) else type(exc).__name__
                        raise ServeError(f"no generator replica answered ({why}); retry later", UNAVAILABLE) from None
                    await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
        return self._described

    def _refuse(self, message: str, status: int, headers: dict | None = None) -> JSONResponse:
        self._m_rejected.inc(tags={"status": str(status)})
        return error_response(message, status, headers)

    async def _generate(self, request: RuntimeRequest) -> tuple[Rendered | None, int, str]:
        """A generator's answer, retrying on another replica when one dies: (rendered, retries, why not)."""
        why = ""
        for attempt in range(RETRIES + 1):
            try:
                return await self.generator.generate.remote(request), attempt, ""
            except REPLICA_LOST as exc:
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                if attempt < RETRIES:
                    self._m_retries.inc()
                    await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
        return None, RETRIES, why

    @api.post("/v1/generate")
    async def generate(self, request: Request) -> Response:
        """Images for ``{"class_ids": [...], ...}``: JSON with base64 PNGs, or ``image/png`` for one image."""
        try:
            body = parse_body(await request.body())
            precision = await self._precision()
            check_precision(body.precision, precision, self.precisions)
            runtime_request = to_request(body, self.info, self.config.max_batch)
            png = wants_png(request.headers.get("accept"), len(runtime_request.class_ids))
        except DartrtError as exc:
            return self._refuse(str(exc), status_of(exc))
        try:
            rendered, retries, why = await self._generate(runtime_request)
        except BackPressureError:
            return self._refuse(f"the service is at capacity ({self.config.max_queued} requests queued for "
                                "its generators); retry later", 503, {"Retry-After": "1"})
        except DeploymentUnavailableError as exc:
            return self._refuse(f"no generator replica is available ({' '.join(str(exc).split())[:200]})", 503,
                                {"Retry-After": "5"})
        if rendered is None:
            return self._refuse(f"the generator replica serving this request died, and so did {RETRIES} more "
                                f"tries ({why}); retry later", 503, {"Retry-After": "5"})
        if rendered.error:
            return error_response(f"generation failed: {rendered.error}", 500)
        headers = {"X-Dartrt-Batch-Images": str(rendered.batch_images),
                   "X-Dartrt-Batch-Requests": str(rendered.batch_requests), "X-Dartrt-Retries": str(retries)}
        if png:
            return Response(content=rendered.pngs[0], media_type="image/png", headers=headers)
        order = body.order if isinstance(body.order, str) else (self.info.order if body.order is None else None)
        answer = generate_answer(self.info.name, precision, runtime_request, rendered.pngs, order,
                                 rendered.batch_images, rendered.batch_requests, retries)
        return JSONResponse(answer, headers=headers)

    @api.get("/v1/models")
    async def models(self) -> Response:
        """The model served, its defaults and the service's limits."""
        try:
            described = await self._describe()
        except DartrtError as exc:
            return error_response(str(exc), status_of(exc))
        info = self.info
        return JSONResponse({"models": [{
            "name": info.name, "num_classes": info.num_classes, "class_names": list(info.class_names),
            "image_size": info.image_size, "grid_size": info.grid_size, "vocab_size": info.vocab_size,
            "precision": described["precision"], "precisions": list(self.precisions),
            "backend": described["backend"], "replicas": self.config.replicas,
            "defaults": {"cfg": info.default_cfg, "cfg_schedule": info.default_cfg_schedule, "order": info.order,
                         "temperature": info.default_temperature, "top_k": info.default_top_k,
                         "top_p": info.default_top_p, "n_per_class": 1, "seed": 0},
            "choices": {"order": list(ORDER_NAMES), "cfg_schedule": list(SCHEDULES)},
            "limits": {"max_images_per_request": self.config.max_batch, "max_batch_images": self.config.max_batch,
                       "batch_wait_ms": self.config.batch_wait_ms, "max_queued_requests": self.config.max_queued},
        }]})

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 while at least one generator replica runs ("degraded" when fewer than asked for), else 503."""
        try:
            app = serve.status().applications.get(self.config.app_name)
        except Exception as exc:  # noqa: BLE001 - the controller is unreachable: say so, do not crash the probe
            return error_response(f"Serve's controller did not answer ({type(exc).__name__})", UNAVAILABLE)
        deployment = app.deployments.get(DEPLOYMENT_NAME) if app is not None else None
        states = {str(k): v for k, v in (deployment.replica_states if deployment is not None else {}).items()}
        running = states.get("RUNNING", 0)
        status = "ok" if running >= self.config.replicas else ("degraded" if running else "down")
        return JSONResponse({"status": status, "model": self.info.name, "replicas": states,
                             "wanted_replicas": self.config.replicas, "pid": os.getpid(), "time": time.time()},
                            status_code=200 if running else 503)
