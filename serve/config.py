"""The service's settings, checked before anything starts, and what each replica reserves.

Why the derived numbers:

- ``max_ongoing_requests`` per generator replica is twice ``max_batch``: one batch running and a full
  one waiting behind it. Anything beyond waits in the handle's queue at the ingress (at most
  ``max_queued`` requests per ingress replica), and past that the ingress answers 503 at once; the
  proxy's queue in front of the ingress has the same bound. Overload is refused, never dropped silently
  or left hanging.
- The ingress only parses, validates and encodes, so it takes no CPU reservation; it may hold every
  request the generators and their queue can, plus room for the ones it refuses at once, and the proxy
  queues as many again in front of it (requests wait there briefly even when replicas are free, while
  Serve's router picks one, so a tight bound here would refuse bursts a free service could take). Two
  ingress replicas (one for a single generator) keep HTTP up while one of them restarts.
- On the CPU the replicas split the cores: each runs onnxruntime with ``threads`` intra-op threads and
  reserves that many Ray CPUs, so Ray never packs more replicas than cores onto a node. A GPU backend
  reserves one GPU per replica (``num_gpus``), and Ray makes that GPU the only one the replica sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.package import BACKENDS

GPU_BACKENDS = ("onnxruntime-cuda", "tensorrt")
APP_NAME = "dartrt"
DEPLOYMENT_NAME = "DartrtGenerator"
INGRESS_NAME = "DartrtIngress"


@dataclass(frozen=True)
class ServeConfig:
    """Everything `dartrt serve` takes. ``threads``/``num_gpus`` None: decided by `resolve_resources`."""

    package: str
    replicas: int = 1
    max_batch: int = 16
    batch_wait_ms: float = 25.0
    max_queued: int = 64
    precision: str | None = None
    backend: str = "auto"
    threads: int | None = None
    num_gpus: float | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    request_timeout_s: float = 300.0
    route_prefix: str = "/"
    app_name: str = APP_NAME
    served_precision: str | None = None  # set by cluster.preflight where the driver can tell (onnxruntime)

    def check(self) -> ServeConfig:
        """One line for the first bad setting; returns self so calls chain."""
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DartrtError(f"{name.replace('_', '-')} must be an integer >= 1, got {value}")

        for name in ("replicas", "max_batch", "max_queued"):
            positive_int(name)
        if self.threads is not None:
            positive_int("threads")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise DartrtError(f"batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms}")
        if not self.request_timeout_s > 0:
            raise DartrtError(f"request-timeout must be > 0 seconds, got {self.request_timeout_s}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise DartrtError(f"gpus per replica must be >= 0, got {self.num_gpus}")
        if not 0 < self.port < 65536:
            raise DartrtError(f"port must be in 1..65535, got {self.port}")
        if self.backend not in BACKENDS:
            raise DartrtError(f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if not self.route_prefix.startswith("/"):
            raise DartrtError(f"route prefix must start with '/', got {self.route_prefix!r}")
        return self

    @property
    def max_ongoing_requests(self) -> int:
        """Per generator replica."""
        return 2 * self.max_batch

    @property
    def ingress_replicas(self) -> int:
        return min(self.replicas, 2)

    @property
    def ingress_max_ongoing_requests(self) -> int:
        """Per ingress replica."""
        return self.replicas * self.max_ongoing_requests + self.max_queued + 32


@dataclass(frozen=True)
class Resources:
    """What one replica reserves from Ray and how many onnxruntime threads it runs."""

    num_cpus: float
    num_gpus: float
    threads: int | None  # None: a GPU backend (onnxruntime picks)


def resolve_resources(config: ServeConfig, cluster_cpus: float, cluster_gpus: float,
                      ort_has_cuda: bool) -> Resources:
    """Per-replica reservations for ``config`` on a cluster with these totals; a one-line error when the
    replicas cannot all fit, instead of a deployment that waits for resources forever."""
    if config.num_gpus is not None:
        gpus = float(config.num_gpus)
    elif config.backend in GPU_BACKENDS:
        gpus = 1.0
    elif config.backend in ("auto", "onnxruntime") and cluster_gpus > 0 and ort_has_cuda:
        gpus = 1.0
    else:
        gpus = 0.0
    if gpus > 0:
        need = gpus * config.replicas
        if need > cluster_gpus:
            raise DartrtError(f"{config.replicas} replica(s) x {gpus:g} GPU need {need:g} GPUs and the Ray cluster "
                              f"has {cluster_gpus:g}; use fewer --replicas or join a larger cluster with --address")
        return Resources(num_cpus=1.0, num_gpus=gpus, threads=config.threads)
    threads = config.threads or max(1, int(cluster_cpus) // config.replicas)
    need = threads * config.replicas
    if need > cluster_cpus:
        raise DartrtError(f"{config.replicas} replica(s) x {threads} thread(s) need {need} CPUs and the Ray cluster "
                          f"has {cluster_cpus:g}; lower --replicas or --threads")
    return Resources(num_cpus=float(threads), num_gpus=0.0, threads=threads)
