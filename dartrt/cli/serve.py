"""`dartrt serve` and `dartrt bench-serve`: an HTTP image service on Ray Serve, and its benchmark.

Ray is imported only once a command runs and the ``serve`` extra is found, so ``--help`` and every
settings error work without it.
"""

from __future__ import annotations

import signal
import time

import click

from .common import one_line_errors

BACKEND_CHOICES = ["auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"]


def service_options(fn):
    """What a deployment takes; shared by `serve` and `bench-serve`."""
    options = [
        click.option("--replicas", type=int, default=1, show_default=True,
                     help="Replicas (processes) serving the package; on the CPU they split the cores, a GPU backend "
                          "takes one GPU each."),
        click.option("--max-batch", type=int, default=16, show_default=True,
                     help="Images per batched forward, and the most one request may ask for."),
        click.option("--batch-wait-ms", type=float, default=25.0, show_default=True,
                     help="How long a batch waits for more requests after its first one (under load, longer "
                          "waits pack fuller batches; alone, a request waits this long)."),
        click.option("--max-queued", type=int, default=64, show_default=True,
                     help="Requests queued for the generators (per ingress replica) when every replica is full; "
                          "past that the service answers 503."),
        click.option("--precision", default=None, help="fp32 (default), fp16 or a calibration variant of the package."),
        click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                     help="As for `dartrt generate`; onnxruntime-cuda and tensorrt take one GPU per replica."),
        click.option("--threads", type=int, default=None,
                     help="onnxruntime threads per replica (CPU). Default: the cluster's CPUs / replicas."),
        click.option("--gpus-per-replica", "num_gpus", type=float, default=None,
                     help="GPUs each replica reserves. Default: 1 for onnxruntime-cuda/tensorrt (and auto on a "
                          "cluster with GPUs and onnxruntime-gpu), else 0."),
        click.option("--port", type=int, default=8000, show_default=True, help="Port of Serve's HTTP proxy."),
        click.option("--address", default=None,
                     help="Ray cluster: unset or 'local' starts a private local instance; 'auto' joins the running "
                          "cluster (`ray start --head`); ray://HOST:10001 a remote one (the package path must exist "
                          "on its nodes)."),
        click.option("--request-timeout", "request_timeout_s", type=float, default=300.0, show_default=True,
                     help="Seconds before the proxy gives up on a request (408)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_config(package, host="127.0.0.1", **kw):
    from dartrt.serve.config import ServeConfig

    return ServeConfig(package=package, host=host, **kw).check()


@click.command("serve")
@click.argument("package", type=click.Path(file_okay=False))
@service_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the HTTP proxy listens on (0.0.0.0: every interface).")
@click.option("--metrics-port", type=int, default=None,
              help="Port of Ray's Prometheus metrics on a local instance (default: one Ray picks, printed).")
@click.option("--detach", is_flag=True, help="With --address: deploy, then exit and leave the service running.")
@one_line_errors
def serve_cmd(package, metrics_port, detach, **options):
    """Serve PACKAGE over HTTP on Ray Serve: POST /v1/generate, GET /v1/models, GET /healthz.

    Concurrent requests are batched into one forward whenever their settings allow it; every image is
    the one `dartrt generate` / runtime.generate gives for the same settings. Stops on Ctrl-C."""
    from dartrt.runtime.errors import DartrtError
    from dartrt.serve import cluster

    config = make_config(package, **options)
    if detach and config.address in (None, "", "local"):
        raise DartrtError("--detach needs --address: a local Ray instance ends with this command")
    service = cluster.start(config, metrics_port=metrics_port)
    for line in cluster.describe(service):
        click.echo(line)
    if detach:
        click.echo(f"detached; remove it with `serve shutdown` or by deploying again (app {config.app_name!r})")
        import ray

        ray.shutdown()
        return

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        cluster.stop(service)


@click.command("bench-serve")
@click.argument("package", type=click.Path(file_okay=False))
@service_options
@click.option("--concurrency", "levels", type=int, multiple=True,
              help="Concurrent clients (repeatable). Default: 1, 4 and 16.")
@click.option("--rounds", type=int, default=4, show_default=True,
              help="Requests per client at each concurrency.")
@click.option("--baseline-requests", type=int, default=8, show_default=True,
              help="runtime.generate calls per loop form in each interleaved chunk.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@one_line_errors
def bench_serve_cmd(package, levels, rounds, baseline_requests, json_path, **options):
    """Images/s and p50/p99 latency of `dartrt serve` PACKAGE at several concurrencies, against loops of
    sequential runtime.generate calls interleaved in the same run (default threads and one thread; the
    faster is the baseline). Starts its own service on 127.0.0.1 --port (a local Ray instance unless
    --address joins a cluster) and stops it at the end."""
    import json

    from dartrt.runtime.fileio import atomic_write_text
    from dartrt.serve.bench import run_bench_serve
    from dartrt.serve.cluster import require_serve

    require_serve()
    config = make_config(package, **options)
    report = run_bench_serve(config, levels=levels or (1, 4, 16), rounds=rounds, baseline_requests=baseline_requests,
                             echo=click.echo, log=lambda line: click.echo(f"bench-serve: {line}", err=True))
    click.echo(f"machine: {report.machine}")
    if json_path:
        atomic_write_text(json_path, json.dumps(report.to_json(), indent=2) + "\n")
        click.echo(f"wrote {json_path}")
