"""`dartrt serve` for real: Ray Serve, 2 replicas of the demo package, concurrent HTTP load.

Ray's processes listen on every interface, so the whole service and every client run in a private
network namespace (``unshare --net``, loopback up) and talk to 127.0.0.1 only; a private PID namespace
too, so that every process Ray starts dies with it, whatever happens. This file is also the driver run
inside it (``python tests/test_serve_service.py OUT DEMO_PKG TINY_PKG``): it runs the scenarios once,
bounded in count and time (a timeout on every request, a deadline on every load, a limit on the whole
run), and writes what came back to OUT/results.json; the tests below check it against
`runtime.generate`, computed here outside the namespace.

Scenarios: 32 concurrent requests of mixed settings with bad requests mixed in; one image as
``image/png``; overload of a deliberately small second app (503s from the bounded queue); one replica
killed in the middle of a load, then the service serving again; models, health and metrics.
"""

import base64
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

RUN_LIMIT_S = 420  # the whole in-namespace run
REQUEST_TIMEOUT_S = 90
PORT = 8000
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


# ---- the scenarios' requests (shared by the driver and the tests) -----------------------------------------
def good_bodies() -> list[dict]:
    """32 requests of mixed settings: classes, seeds, CFG on/off and scales, schedules, orders, sampling."""
    bodies = []
    for i in range(32):
        body = {"class_ids": [i % 10], "seed": 1000 + i}
        if i % 4 == 1:
            body["cfg"] = 1.0  # CFG off: never batched with CFG-on rows
        elif i % 4 == 2:
            body["cfg"] = 2.0 + (i % 3) * 0.5
        elif i % 4 == 3:
            body.update(cfg=3.0, cfg_schedule="linear" if i % 8 == 3 else "power-cosine")
        if i % 8 == 6:
            body["n_per_class"] = 2
        if i % 16 == 5:
            body["order"] = "raster"
        if i % 16 == 10:
            body["top_k"] = 20
        if i == 12:
            body["class_ids"] = [2, 7]
        bodies.append(body)
    return bodies


BAD = [  # (body, status)
    ({"class_ids": [99], "seed": 1}, 400),
    (b'{"class_ids": [1], "seed": ', 400),
    (b'{"class_ids": [1], "cfg": NaN}', 400),
    ({"class_ids": [1], "precision": "int8"}, 400),
    ({"class_ids": [1, 2, 3, 4], "n_per_class": 5}, 413),
    ({"class_ids": [1], "seed": "x"}, 400),
]


def mixed_bodies() -> tuple[list, list[int | None]]:
    """The good bodies with the bad ones mixed in; the status each bad one must get (None: a good one)."""
    bodies: list = list(good_bodies())
    expect: list[int | None] = [None] * len(bodies)
    for k, (body, status) in enumerate(BAD):
        at = 3 + 6 * k
        bodies.insert(at, body)
        expect.insert(at, status)
    return bodies, expect


# ---- the driver (runs inside the namespaces) ------------------------------------------------------------------
def _record(shot) -> dict:
    out = {"status": shot.status, "seconds": shot.seconds, "error": shot.error}
    if shot.status == 200:
        answer = json.loads(shot.body)
        out.update(images=[e["png_base64"] for e in answer["images"]], batch=answer["batch"],
                   retries=answer["retries"])
    else:
        out["text"] = shot.body.decode("utf-8", "replace")[:400]
    return out


def _replicas(app: str) -> list[str]:
    """The generator replicas' actor names (Serve names them SERVE_REPLICA::app#deployment#id)."""
    import ray

    from dartrt.serve.config import DEPLOYMENT_NAME

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#{DEPLOYMENT_NAME}#")]


def _wait_replaced(app: str, victim: str, replicas: int, deadline_s: float) -> bool:
    """Until Serve has replaced the killed replica: ``replicas`` running again, the victim not among them
    (right after the kill Serve's status still counts it as running)."""
    from ray import serve

    from dartrt.serve.config import DEPLOYMENT_NAME

    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        names = _replicas(app)
        status = serve.status().applications.get(app)
        if victim not in names and len(names) == replicas and status is not None and status.status == "RUNNING":
            states = status.deployments[DEPLOYMENT_NAME].replica_states
            if states.get("RUNNING", 0) == replicas and sum(states.values()) == replicas:
                return True
        time.sleep(0.5)
    return False


def _metrics(url: str | None, deadline_s: float) -> dict:
    """Poll Ray's metrics endpoint (bounded) until our series has been exported once."""
    import urllib.request

    text, stop = "", time.monotonic() + deadline_s
    while url and time.monotonic() < stop:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode("utf-8", "replace")
        except OSError:
            text = ""
        if "dartrt_images_generated" in text and "serve_num_http_requests" in text:
            break
        time.sleep(1.0)
    names = sorted({ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")})
    return {"url": url, "names": [n for n in names if "serve" in n or "dartrt" in n]}


def drive(out: Path, demo_pkg: str, tiny_pkg: str, ray_dir: str) -> None:
    import ray

    from dartrt.serve import cluster
    from dartrt.serve.bench import request_bodies, service_level
    from dartrt.serve.client import Client
    from dartrt.serve.config import ServeConfig
    from dartrt.serve.load import run_load

    results: dict = {}
    t0 = time.monotonic()
    config = ServeConfig(demo_pkg, replicas=2, threads=1, max_batch=16, max_queued=64, port=PORT,
                         request_timeout_s=REQUEST_TIMEOUT_S)
    service = cluster.start(config, num_cpus=4, temp_dir=ray_dir)
    results["start_s"] = time.monotonic() - t0
    try:
        client = Client(service.url, timeout=30)
        results["models"], results["health"] = client.models(), client.health()

        bodies, _ = mixed_bodies()
        shots = run_load(service.url, bodies, len(bodies), timeout_s=REQUEST_TIMEOUT_S, deadline_s=180)
        results["mixed"] = [_record(s) for s in shots]

        answer = client.request("POST", "/v1/generate", good_bodies()[0], accept="image/png")
        results["png"] = {"status": answer.status, "type": answer.content_type,
                          "png": base64.b64encode(answer.body).decode()}

        # Overload: a second, deliberately small app (1 replica, 1 image at a time, 2 queued).
        small = ServeConfig(tiny_pkg, replicas=1, threads=1, max_batch=1, max_queued=2, port=PORT,
                            request_timeout_s=REQUEST_TIMEOUT_S, route_prefix="/small", app_name="small")
        small_service = cluster.deploy(cluster.preflight(small), started_ray=False)
        burst = [{"class_ids": [i % 10], "seed": i} for i in range(24)]
        shots = run_load(small_service.url, burst, len(burst), timeout_s=60, deadline_s=90)
        results["overload"] = [_record(s) for s in shots]

        # Fault: kill one of the two replicas while a load is running on both.
        load: list = []
        load_bodies = good_bodies()[:24]
        runner = threading.Thread(target=lambda: load.extend(
            run_load(service.url, load_bodies, 12, timeout_s=REQUEST_TIMEOUT_S, deadline_s=150)))
        started = time.monotonic()
        runner.start()
        time.sleep(1.5)
        victims = _replicas(config.app_name)
        ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
        results["killed_at_s"] = time.monotonic() - started
        runner.join(timeout=200)
        results["fault"] = {"replicas_before": len(victims), "finished": not runner.is_alive(),
                            "shots": [_record(s) for s in load]}
        results["recovered"] = _wait_replaced(config.app_name, victims[0], config.replicas, deadline_s=90)
        results["victim"] = victims[0]
        shots = run_load(service.url, good_bodies()[:4], 4, timeout_s=REQUEST_TIMEOUT_S, deadline_s=120)
        results["after"] = [_record(s) for s in shots]
        results["replicas_after"] = _replicas(config.app_name)

        level = service_level(service.url, request_bodies(4, 10, 77), 4, timeout_s=REQUEST_TIMEOUT_S)
        results["bench_level"] = dataclasses.asdict(level)
        results["metrics"] = _metrics(service.metrics_url, deadline_s=30)
    finally:
        cluster.stop(service)
    results["total_s"] = time.monotonic() - t0
    (out / "results.json").write_text(json.dumps(results))


# ---- the tests (outside the namespaces) -----------------------------------------------------------------------
def namespace_works() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        probe = subprocess.run([*NAMESPACE, "sh", "-c", "ip link set lo up"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if probe.returncode != 0:
        return f"unshare --net/--pid is not permitted here: {probe.stderr.decode(errors='replace').strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def demo_package(tmp_path_factory):
    """The bundled demo model exported once for this module (about 30-60 s on one CPU core)."""
    torch = pytest.importorskip("torch")
    from dartrt.dar.checkpoint import resolve_source
    from dartrt.exporter import export_package

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("serve-demo") / "demo"
        export_package(resolve_source(None), out, check=False, log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def served(demo_package, tiny_dar_package, tmp_path_factory):
    """Run the driver once in the namespaces; its results.json."""
    pytest.importorskip("ray")
    pytest.importorskip("fastapi")
    reason = namespace_works()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("serve-run")
    (out / "home").mkdir()  # Ray writes its auth token under HOME
    ray_dir = tempfile.mkdtemp(prefix="dartrt-ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {**os.environ, "HOME": str(out / "home"), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    command = f"ip link set lo up && exec {sys.executable} -P {Path(__file__).resolve()} {out} {demo_package} " \
              f"{tiny_dar_package} {ray_dir}"
    try:
        with open(out / "driver.log", "wb") as log:
            proc = subprocess.Popen([*NAMESPACE, "sh", "-c", command], stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                proc.wait(timeout=RUN_LIMIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # unshare --kill-child takes every namespaced process with it
                proc.wait(timeout=30)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    tail = (out / "driver.log").read_bytes()[-4000:].decode("utf-8", "replace")
    assert proc.returncode == 0 and (out / "results.json").is_file(), f"driver failed:\n{tail}"
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def references(served, demo_package):
    """runtime.generate's PNG bytes for every good body (after the service is gone: no CPU contest)."""
    from dartrt.runtime import generate
    from dartrt.runtime.package import open_package_backend
    from dartrt.serve.codec import png_bytes

    engine = open_package_backend(demo_package, "onnxruntime-cpu")
    refs = []
    for body in good_bodies():
        settings = {k: v for k, v in body.items() if k != "class_ids"}
        refs.append([png_bytes(im) for im in generate(engine, body["class_ids"], **settings)])
    return refs


def pngs(record: dict) -> list[bytes]:
    return [base64.b64decode(p) for p in record["images"]]


def test_mixed_concurrent_requests_equal_runtime_generate(served, references):
    """32 concurrent requests of mixed settings on 2 replicas: all succeed, each image is byte for byte
    runtime.generate's; several were batched together."""
    _, expect = mixed_bodies()
    good = [r for r, e in zip(served["mixed"], expect) if e is None]
    assert [r["status"] for r in good] == [200] * 32, [r.get("text") for r in good if r["status"] != 200]
    for i, (record, want) in enumerate(zip(good, references)):
        assert pngs(record) == want, f"request {i}: {good_bodies()[i]}"
    assert max(r["batch"]["requests"] for r in good) > 1, "no two requests shared a forward"


def test_bad_requests_get_their_4xx_and_one_line(served):
    _, expect = mixed_bodies()
    bad = [(r, e) for r, e in zip(served["mixed"], expect) if e is not None]
    assert [r["status"] for r, _ in bad] == [e for _, e in bad]
    for record, _ in bad:
        message = json.loads(record["text"])["error"]
        assert message and "\n" not in message and "Traceback" not in message
    texts = " | ".join(json.loads(r["text"])["error"] for r, _ in bad)
    for words in ("class id 99 is outside", "not valid JSON", "cfg must be a finite number",
                  "no precision 'int8'", "asks for 20 images", "seed must be an integer"):
        assert words in texts


def test_one_image_as_image_png(served, references):
    assert served["png"]["status"] == 200 and served["png"]["type"] == "image/png"
    assert base64.b64decode(served["png"]["png"]) == references[0][0]


def test_overload_gets_503_never_a_hang(served):
    statuses = [r["status"] for r in served["overload"]]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1
    assert all(r["seconds"] < 60 for r in served["overload"])
    for record in served["overload"]:
        if record["status"] == 503:
            assert "at capacity" in json.loads(record["text"])["error"], record["text"]


def test_a_killed_replica_costs_at_most_5xx_and_the_service_recovers(served, references):
    fault = served["fault"]
    assert fault["replicas_before"] == 2 and fault["finished"]
    statuses = [r["status"] for r in fault["shots"]]
    assert len(statuses) == 24
    assert all(s == 200 or 500 <= s < 600 for s in statuses), statuses  # never no answer, never a 4xx
    hit = sum(r.get("retries", 0) for r in fault["shots"]) + sum(s != 200 for s in statuses)
    assert hit > 0, "the kill hit no request in flight: the scenario tested nothing"
    for record in fault["shots"]:
        if record["status"] != 200:
            assert json.loads(record["text"])["error"], record["text"]  # one clear line, not a bare 500
    assert all(r["seconds"] < REQUEST_TIMEOUT_S for r in fault["shots"])
    for record, want in zip(fault["shots"], references):
        if record["status"] == 200:
            assert pngs(record) == want
    assert served["recovered"]
    assert [r["status"] for r in served["after"]] == [200] * 4
    assert [pngs(r) for r in served["after"]] == references[:4]
    assert len(served["replicas_after"]) == 2 and served["victim"] not in served["replicas_after"]


def test_bench_serve_measures_a_level(served):
    level = served["bench_level"]
    assert level["ok"] == 4 and level["statuses"] == {"200": 4}
    assert level["images_per_s"] > 0 and level["p99_ms"] >= level["p50_ms"] > 0 and level["mean_batch_images"] >= 1


def test_models_health_and_metrics(served):
    model = served["models"]["models"][0]
    assert model["name"] == "DAR-demo" and model["precision"] == "fp32" and "fp32" in model["precisions"]
    assert model["defaults"]["cfg"] == 1.25 and model["limits"]["max_images_per_request"] == 16
    assert served["health"]["status"] == "ok"
    names = served["metrics"]["names"]
    assert any("serve_num_http_requests" in n for n in names), names
    assert any("dartrt_images_generated" in n for n in names), names


if __name__ == "__main__":
    drive(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
