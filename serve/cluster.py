"""Start or join Ray, deploy the service, and take it down again.

`preflight` checks everything it can in this process before Ray starts (the package's files, the
precision, the settings), so a mistake costs one line and no cluster. `start` brings up a private local
Ray instance (``address`` None or "local") or joins a running cluster ("auto", "ray://host:10001"); the
package path must then exist on every node that runs a replica. `stop` undoes exactly what `start` did:
it shuts a local instance down, and on a joined cluster deletes only this application.
"""

from __future__ import annotations

import importlib.util
import math
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from dartrt.extras import missing
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.precisions import engine_precision, resolve_precision

from .config import ServeConfig, resolve_resources

SERVE_MODULES = ("ray", "fastapi", "starlette")


@dataclass(frozen=True)
class Service:
    """A deployed service: where to reach it and what each replica reserved."""

    config: ServeConfig
    url: str
    metrics_url: str | None
    num_cpus: float
    num_gpus: float
    threads: int | None
    started_ray: bool


def require_serve() -> None:
    absent = missing(SERVE_MODULES)
    if absent:
        raise DartrtError(f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} needed for `dartrt serve` and "
                          "not installed: pip install 'dartrt[serve]'")


def preflight(config: ServeConfig) -> ServeConfig:
    """The checked config with the package as an absolute path (replicas do not share our working folder)."""
    config.check()
    manifest = Manifest.load(config.package)  # every file hashed once here: a corrupt package fails now
    if config.backend == "tensorrt":  # None: the backend picks the best engine built, known once it opens
        served = engine_precision(manifest.data, config.precision, config.package)
    else:
        served = resolve_precision(manifest.data, config.precision, config.package).name
    return replace(config, package=str(Path(config.package).resolve()), served_precision=served)


def check_port_free(host: str, port: int) -> None:
    """The proxy's port must be free on this machine (a local instance), or Ray fails deep inside."""
    bind_host = "0.0.0.0" if host in ("0.0.0.0", "") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise DartrtError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                              "or --host") from None


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "Error:" in ln), lines[-1] if lines else type(exc).__name__)


def _ort_has_cuda() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def start_ray(config: ServeConfig, metrics_port: int | None = None, num_cpus: int | None = None,
              temp_dir: str | None = None) -> bool:
    """Connect to Ray as ``config.address`` says; True when this call started a local instance."""
    import ray

    if ray.is_initialized():
        return False
    local = config.address in (None, "", "local")
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
    if local:
        if metrics_port is not None:
            kwargs["_metrics_export_port"] = int(metrics_port)
        if num_cpus is not None:
            kwargs["num_cpus"] = int(num_cpus)
        if temp_dir is not None:
            kwargs["_temp_dir"] = str(temp_dir)
        ray.init(address="local", **kwargs)
        return True
    try:
        ray.init(address=config.address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DartrtError(f"cannot join the Ray cluster at {config.address}: {first}") from None
    return False


def metrics_url() -> str | None:
    """Where this node's Prometheus metrics are (Ray's metrics agent; Serve's and dartrt_* series)."""
    import ray

    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            return f"http://{node.get('NodeManagerAddress', '127.0.0.1')}:{port}/metrics"
    return None


def deploy(config: ServeConfig, started_ray: bool) -> Service:
    """Deploy ``config`` on the connected cluster and wait until every replica is up."""
    import ray
    from ray import serve

    from .app import Generator, Ingress

    totals = ray.cluster_resources()
    res = resolve_resources(config, float(totals.get("CPU", 0)), float(totals.get("GPU", 0)), _ort_has_cuda())
    try:
        serve.start(http_options={"host": config.host, "port": config.port,
                                  "request_timeout_s": config.request_timeout_s})
    except (RuntimeError, ray.exceptions.RayError) as exc:
        raise DartrtError(f"Ray Serve could not start its HTTP proxy on {config.host}:{config.port}: "
                          f"{_last_line(exc)}") from None
    generator = Generator.options(
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued,
        ray_actor_options={"num_cpus": res.num_cpus, "num_gpus": res.num_gpus},
    ).bind(config, res.threads)
    app = Ingress.options(
        num_replicas=config.ingress_replicas, max_ongoing_requests=config.ingress_max_ongoing_requests,
        max_queued_requests=config.ingress_max_ongoing_requests, ray_actor_options={"num_cpus": 0},
    ).bind(config, generator)
    try:
        serve.run(app, name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    except (RuntimeError, ray.exceptions.RayError) as exc:
        raise DartrtError(f"the service did not start: {_last_line(exc)}") from None
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    prefix = config.route_prefix.rstrip("/")
    return Service(config, f"http://{host}:{config.port}{prefix}", metrics_url(), res.num_cpus, res.num_gpus,
                   res.threads, started_ray)


def start(config: ServeConfig, *, metrics_port: int | None = None, num_cpus: int | None = None,
          temp_dir: str | None = None) -> Service:
    """Preflight, Ray, deployment: a running service, or one line saying why not (Ray left as found)."""
    require_serve()
    config = preflight(config)
    if config.address in (None, "", "local"):
        check_port_free(config.host, config.port)
    started = start_ray(config, metrics_port, num_cpus, temp_dir)
    try:
        return deploy(config, started)
    except BaseException:
        _disconnect(started, config.app_name)
        raise


def _disconnect(started_ray: bool, app_name: str) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if started_ray:
            serve.shutdown()
        else:
            serve.delete(app_name)
    finally:
        ray.shutdown()


def stop(service: Service) -> None:
    """Take down what `start` brought up: the whole local instance, or only this app on a joined cluster."""
    _disconnect(service.started_ray, service.config.app_name)


def describe(service: Service) -> list[str]:
    """The lines `dartrt serve` prints once the service is up."""
    c = service.config
    per = (f"{service.num_gpus:g} GPU" if service.num_gpus else
           f"{service.threads} onnxruntime thread(s) on {math.ceil(service.num_cpus)} CPU(s)")
    lines = [f"serving {c.package} at {service.url}/v1/generate",
             f"  {c.replicas} replica(s), {per} each; batches of up to {c.max_batch} images "
             f"(wait {c.batch_wait_ms:g} ms); at most {c.max_queued} requests queued, then 503",
             f"  GET {service.url}/v1/models, {service.url}/healthz"]
    if service.metrics_url:
        lines.append(f"  Prometheus metrics (Ray Serve's and dartrt_*): {service.metrics_url}")
    return lines
