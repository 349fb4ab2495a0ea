"""`dartrt serve` / `bench-serve` settings and per-replica resources: one line and exit 2 before any Ray
process starts; what each replica reserves on CPUs and GPUs."""

import pytest
from click.testing import CliRunner

import dartrt.serve.cluster as cluster
from dartrt.cli import main
from dartrt.runtime.errors import DartrtError
from dartrt.serve.config import ServeConfig, resolve_resources


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_the_service_options():
    for command in ("serve", "bench-serve"):
        result = run(command, "--help")
        assert result.exit_code == 0, result.output
        for option in ("--replicas", "--max-batch", "--batch-wait-ms", "--precision", "--backend", "--address",
                       "--port", "--max-queued"):
            assert option in result.output
    assert "--host" in run("serve", "--help").output
    assert "--concurrency" in run("bench-serve", "--help").output


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command got as far as starting Ray."""
    def boom(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "start_ray", boom)


@pytest.mark.parametrize("args, words", [
    (["--replicas", 0], "replicas must be an integer >= 1, got 0"),
    (["--max-batch", 0], "max-batch must be an integer >= 1"),
    (["--max-queued", -1], "max-queued must be an integer >= 1"),
    (["--batch-wait-ms", -5], "batch-wait-ms must be in [0, 10000]"),
    (["--threads", 0], "threads must be an integer >= 1"),
    (["--port", 70000], "port must be in 1..65535"),
    (["--request-timeout", 0], "request-timeout must be > 0"),
    (["--precision", "int8"], "has no precision 'int8'"),
    (["--detach"], "--detach needs --address"),
])
def test_bad_settings_are_one_line_without_ray(tiny_dar_package, no_ray, args, words):
    result = run("serve", tiny_dar_package, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output


def test_a_missing_package_is_one_line(tmp_path, no_ray):
    result = run("serve", tmp_path / "nope")
    assert result.exit_code == 2 and "package folder not found" in result.output


def test_without_the_serve_extra_the_error_names_it(tiny_dar_package, no_ray, monkeypatch):
    monkeypatch.setattr(cluster, "missing", lambda modules: ["ray"])
    for command in ("serve", "bench-serve"):
        result = run(command, tiny_dar_package)
        assert result.exit_code == 2
        assert "pip install 'dartrt[serve]'" in result.output


def config(**kw):
    return ServeConfig("pkg", **kw).check()


def test_cpu_replicas_split_the_cores():
    res = resolve_resources(config(replicas=2), cluster_cpus=8, cluster_gpus=0, ort_has_cuda=False)
    assert (res.num_cpus, res.num_gpus, res.threads) == (4.0, 0.0, 4)
    res = resolve_resources(config(replicas=3, threads=2), cluster_cpus=8, cluster_gpus=0, ort_has_cuda=False)
    assert (res.num_cpus, res.threads) == (2.0, 2)
    with pytest.raises(DartrtError, match="need 12 CPUs and the Ray cluster has 8"):
        resolve_resources(config(replicas=3, threads=4), cluster_cpus=8, cluster_gpus=0, ort_has_cuda=False)


def test_gpu_backends_reserve_one_gpu_per_replica():
    res = resolve_resources(config(replicas=2, backend="tensorrt"), cluster_cpus=8, cluster_gpus=2, ort_has_cuda=False)
    assert (res.num_gpus, res.threads) == (1.0, None)
    auto = resolve_resources(config(), cluster_cpus=8, cluster_gpus=1, ort_has_cuda=True)
    assert auto.num_gpus == 1.0
    cpu_ort = resolve_resources(config(), cluster_cpus=8, cluster_gpus=1, ort_has_cuda=False)
    assert cpu_ort.num_gpus == 0.0
    with pytest.raises(DartrtError, match="need 2 GPUs and the Ray cluster has 1"):
        resolve_resources(config(replicas=2, backend="onnxruntime-cuda"), cluster_cpus=8, cluster_gpus=1,
                          ort_has_cuda=True)


def test_max_ongoing_holds_a_running_and_a_forming_batch():
    assert config(max_batch=8).max_ongoing_requests == 16


def test_bench_report_compares_with_the_faster_loop():
    from dartrt.serve.bench import BenchReport, Level

    def loop(mode, ips):
        return Level(f"sequential runtime.generate, {mode}", 1, 8, 8, 8 / ips, ips, 100.0, 120.0)

    chunks = [[loop("default threads", 1.0), loop("1 thread", 3.0)],
              [loop("default threads", 2.0), loop("1 thread", 5.0)]]
    served = Level("dartrt serve", 16, 64, 64, 8.0, 8.0, 1500.0, 2000.0, 12.5, {"200": 64})
    report = BenchReport("pkg", {}, {}, chunks, [served])
    assert report.baseline_mode.endswith("1 thread") and report.baseline_images_per_s == 4.0
    assert report.ratio(served) == 2.0
    table = report.markdown()
    assert "**2.00x**" in table and "12.5" in table and "before Ray started" in table


def test_a_busy_port_is_one_line_before_ray():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # loopback only, for the duration of the check
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(DartrtError, match=f"cannot listen on 127.0.0.1:{port}"):
            cluster.check_port_free("127.0.0.1", port)
