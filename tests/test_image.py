"""The container image as built from docker/Dockerfile (docker/build-image.sh --cpu --wheelhouse), run from its
own root filesystem: no container runtime starts on these machines, so each replica is the image's Cmd, with
its Env, WorkingDir and User, chrooted into the image's mounted root, read-only with a tmpfs on /tmp (as
docker-compose.yml runs it), in a private mount namespace. What that does not cover of `docker compose up`:
network and PID isolation, cgroup limits, dropped capabilities, and Docker's DNS (nginx and Prometheus here
reach the replicas by loopback port instead of by service name).

Slow (the build is minutes on a fresh machine; cached layers make a rebuild seconds) and marked `image`, so
`pytest -m "not image"` leaves it out. JMVAE_TEST_IMAGE=TAG tests an image built already instead of building.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from service_support import image_bytes, running_server
from test_deploy import NGINX, balancer

from bench.processes import free_port
from jmvae.service.settings import Settings
from jmvae.training.synthetic import render_faces, sample_attributes

ROOT = Path(__file__).resolve().parent.parent
TAG = os.environ.get("JMVAE_TEST_IMAGE", "localhost/jmvae:cpu-test")
CPU_IMAGE_LIMIT = 1.5e9  # bytes: the CPU variant, the bound
START_S = 180.0  # a replica's start-up: import torch, load and warm the model, on a busy 2-core machine


def _fail_or_skip(reason: str) -> None:
    # CI installs podman (.ci/run): there a missing builder is a broken CI, not a reason to skip.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    rootfs: Path
    config: dict  # the image's Config: Env, Cmd, WorkingDir, User
    healthcheck: list[str]  # the Dockerfile's HEALTHCHECK command (kept by podman's --format docker)
    size: int


@pytest.fixture(scope="module")
def image() -> Iterator[BuiltImage]:
    if os.geteuid() != 0 or shutil.which("podman") is None or shutil.which("unshare") is None:
        _fail_or_skip("needs root and podman (apt-get install podman mmdebstrap) to build and mount the image")
    if "JMVAE_TEST_IMAGE" not in os.environ:
        done = subprocess.run(
            ["bash", str(ROOT / "docker" / "build-image.sh"), "--cpu", "--wheelhouse", TAG],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    inspected = json.loads(subprocess.run(["podman", "image", "inspect", TAG], capture_output=True, check=True).stdout)
    rootfs = Path(
        subprocess.run(["podman", "image", "mount", TAG], capture_output=True, text=True, check=True).stdout.strip()
    )
    try:
        config = inspected[0]["Config"]
        healthcheck = (inspected[0].get("Healthcheck") or config.get("Healthcheck") or {}).get("Test", [])
        yield BuiltImage(TAG, rootfs, config, healthcheck, int(inspected[0]["Size"]))
    finally:
        subprocess.run(["podman", "image", "unmount", TAG], capture_output=True)


def _image_env(image: BuiltImage, **overrides: str) -> list[str]:
    env = dict(item.split("=", 1) for item in image.config["Env"])
    return [f"{k}={v}" for k, v in (env | overrides).items()]


def _in_image(image: BuiltImage, argv: Sequence[str], env: Sequence[str], read_only: bool = True) -> list[str]:
    """argv run as the image's User in its WorkingDir, its root mounted (read-only) with /proc, /dev and a tmpfs
    on /tmp, in a mount namespace of its own so that nothing is left mounted on the host."""
    root = shlex.quote(str(image.rootfs))
    mounts = [
        f"mount --bind {root} {root}",
        *([f"mount -o remount,bind,ro {root}"] if read_only else []),
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/tmp",
    ]
    inner = [
        "chroot",
        f"--userspec={image.config['User']}",
        str(image.rootfs),
        "/usr/bin/env",
        "-i",
        "-C",
        image.config["WorkingDir"],
        *env,
        *argv,
    ]
    script = " && ".join(mounts) + " && exec " + shlex.join(inner)
    return ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script]


class ImageReplica:
    """The image's own Cmd, as its own User, on a loopback port of its own (the image's PORT)."""

    def __init__(self, image: BuiltImage, logs: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.env = _image_env(image, PORT=str(self.port), OMP_NUM_THREADS="1", JMVAE_MAX_BATCH_SIZE="8")
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                _in_image(image, image.config["Cmd"], self.env), stdout=log, stderr=subprocess.STDOUT
            )

    def server_pid(self) -> int:
        """The serving process: unshare's child, which became `jmvae serve` by exec."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while True:
            assert self.process.poll() is None, f"replica exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"never ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.server_pid(), signal.SIGTERM)
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def replicas(image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ImageReplica]]:
    logs = tmp_path_factory.mktemp("image-replicas")
    started = [ImageReplica(image, logs, name) for name in ("a", "b")]
    try:
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def test_the_cpu_image_is_small_and_holds_the_service_alone(image: BuiltImage) -> None:
    assert image.size < CPU_IMAGE_LIMIT, f"{image.size / 1e9:.2f} GB"
    ours = {"tiny_configs.py", "service_support.py", "image_builders.py", "test_layering.py"}  # our test suite
    data = {"img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt", "metrics.jsonl"}  # CelebA, runs
    found: list[str] = []
    for path in image.rootfs.rglob("*"):
        relative = "/" + str(path.relative_to(image.rootfs))
        if relative.startswith(("/proc/", "/sys/", "/dev/")):
            continue
        name = path.name
        if (
            name in ours | data
            or (name.endswith(".safetensors") and name != "jmvae-default.safetensors")
            or (name == "pyvenv.cfg" and relative != "/opt/venv/pyvenv.cfg")  # another venv
            or (name.endswith(".whl") and not relative.startswith("/usr/share/python-wheels/"))  # venv's own
            or relative.startswith(("/src", "/wheels", "/root/.cache", "/tmp/"))
            or relative in {"/usr/bin/gcc", "/usr/bin/cc", "/usr/bin/make"}
        ):
            found.append(relative)
    assert not found, found[:20]
    assert (image.rootfs / "opt/venv/bin/jmvae").is_file()
    assert (image.rootfs / "opt/venv/lib/python3.11/site-packages/jmvae/service/default_model").is_dir()


def test_the_image_runs_as_its_own_user_on_a_read_only_root(image: BuiltImage, replicas: list[ImageReplica]) -> None:
    uid, gid = (int(part) for part in image.config["User"].split(":"))
    assert uid != 0 and gid != 0
    status = Path(f"/proc/{replicas[0].server_pid()}/status").read_text()
    assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status
    # Where the image's user could write with the root writable (without compose's read_only): the world's
    # scratch directories, nothing of the image's own.
    probe = ["find", "/", "-xdev", "-writable", "-not", "-path", "/tmp/*", "-print"]
    done = subprocess.run(_in_image(image, probe, _image_env(image), read_only=False), capture_output=True, text=True)
    unreadable = [line for line in done.stderr.splitlines() if line.endswith("Permission denied")]
    assert done.returncode in (0, 1) and len(unreadable) == len(done.stderr.splitlines()), done.stderr
    assert set(done.stdout.split()) <= {"/tmp", "/var/tmp", "/run/lock"}, done.stdout
    # Read-only, as compose runs it: nothing outside /tmp, which is where HOME points.
    write = ["sh", "-c", "for d in / /opt/venv /etc /var/tmp; do touch $d/x 2>/dev/null && echo $d; done; touch /tmp/x"]
    done = subprocess.run(_in_image(image, write, _image_env(image)), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", (done.stdout, done.stderr)


def test_the_healthcheck_command_succeeds_inside_the_image(image: BuiltImage, replicas: list[ImageReplica]) -> None:
    test = image.healthcheck
    assert test and test[0] == "CMD", test
    done = subprocess.run(_in_image(image, test[1:], replicas[0].env), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    down = subprocess.run(
        _in_image(image, test[1:], _image_env(image, PORT=str(free_port()))), capture_output=True, timeout=30
    )
    assert down.returncode != 0  # it fails when nothing answers: the check can fail


def _face_png() -> bytes:
    rng = np.random.default_rng(3)
    return image_bytes(render_faces(sample_attributes(1, rng), rng, image_size=128)[0])


def _answers(url: str) -> dict[str, dict]:
    photo = {"image": ("face.png", _face_png(), "image/png")}
    with httpx.Client(base_url=url, timeout=60) as client:
        answers = {
            "attributes": client.post("/attributes", files=photo),
            "generate": client.post("/generate", json={"attributes": {"Smiling": 2, "Male": -1}, "n": 2, "seed": 5}),
            "edit": client.post("/edit", files=photo, data={"changes": '{"Smiling": 2}'}),
        }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
    return {name: answer.json() for name, answer in answers.items()}


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


def _images(answer: object) -> list[str]:
    """Every base64 PNG in an answer, in order."""
    if isinstance(answer, dict):
        return [png for value in answer.values() for png in _images(value)]
    if isinstance(answer, list):
        return [png for value in answer for png in _images(value)]
    return [answer] if isinstance(answer, str) and answer.startswith("iVBOR") else []


def test_the_image_answers_as_the_package_does_outside_it(replicas: list[ImageReplica]) -> None:
    inside = _answers(replicas[0].url)
    with running_server(Settings(device="cpu")) as url:
        outside = _answers(url)
    got, want = inside["attributes"]["probabilities"], outside["attributes"]["probabilities"]
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5
    for name in ("generate", "edit"):
        pngs_in, pngs_out = _images(inside[name]), _images(outside[name])
        assert pngs_in and len(pngs_in) == len(pngs_out), name
        for a, b in zip(pngs_in, pngs_out, strict=True):
            assert np.abs(_pixels(a) - _pixels(b)).max() <= 1, name


def test_sigterm_answers_every_request_in_flight_and_exits_within_the_grace_period(
    image: BuiltImage, tmp_path: Path
) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grace_s = float(compose["services"]["jmvae"]["stop_grace_period"].removesuffix("s"))
    replica = ImageReplica(image, tmp_path, "drained")
    try:
        replica.wait_ready()
        answered_at: list[float] = []
        first_answer = threading.Event()

        def post(seed: int) -> str:
            answer = httpx.post(f"{replica.url}/generate", json={"n": 16, "seed": seed}, timeout=60)
            answered_at.append(time.monotonic())
            first_answer.set()
            return f"{answer.status_code} {answer.headers.get('retry-after', '-')}"

        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(post, seed) for seed in range(32)]
            # Signalled once the first batch (of 8) has answered: the other 24 are then still queued or running,
            # however fast the machine.
            assert first_answer.wait(60)
            stopped = time.monotonic()
            os.kill(replica.server_pid(), signal.SIGTERM)
            statuses = [f.result() for f in futures]
        # Every request answered, none dropped: the running batch finishes, what is still queued gets a 503 that
        # a balancer retries on another replica (docs/guarantees.md).
        assert set(statuses) <= {"200 -", "503 1"} and "200 -" in statuses, statuses
        assert max(answered_at) > stopped  # some were still queued or running when the signal came
        # uvicorn re-raises the signal once it has drained: a container's exit status 143, as Docker reports it.
        assert replica.process.wait(timeout=grace_s) in (0, -signal.SIGTERM)
        assert time.monotonic() - stopped < grace_s
    finally:
        replica.stop()


@pytest.mark.skipif(NGINX is None or shutil.which("prometheus") is None, reason="needs nginx and prometheus")
def test_two_replicas_behind_nginx_and_scraped_by_prometheus(
    image: BuiltImage, replicas: list[ImageReplica], tmp_path: Path
) -> None:
    """The compose stack's parts with real binaries: the repository's nginx config in front of two replicas of
    the image, and its Prometheus config with the two as static targets (compose finds them by DNS)."""
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    jmvae = next(job for job in config["scrape_configs"] if job["job_name"] == "jmvae")
    jmvae.pop("dns_sd_configs")
    jmvae["static_configs"] = [{"targets": [r.address for r in replicas]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus_port = free_port()
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        _wait_both_up(f"http://127.0.0.1:{prometheus_port}", replicas)
        (tmp_path / "lb").mkdir()
        with balancer(tmp_path / "lb", [r.address for r in replicas]) as url:
            _spread_and_survive_a_kill(url, replicas)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def _spread_and_survive_a_kill(url: str, replicas: list[ImageReplica]) -> None:
    before = [_generated(r) for r in replicas]
    with httpx.Client(timeout=30) as client:
        for seed in range(20):
            assert client.post(f"{url}/generate", json={"n": 0, "seed": seed}).status_code == 200
    assert all(_generated(r) > b for r, b in zip(replicas, before, strict=True))  # both served

    statuses: list[int | str] = []
    lock = threading.Lock()
    victim = replicas[1]

    def one(seed: int) -> None:
        try:
            status: int | str = httpx.post(f"{url}/generate", json={"n": 1, "seed": seed}, timeout=30).status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        with lock:
            statuses.append(status)
            if len(statuses) == 30:
                os.kill(victim.server_pid(), signal.SIGKILL)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(120)))
    assert statuses == [200] * 120, [s for s in statuses if s != 200]
    victim.process.wait(timeout=10)


def _generated(replica: ImageReplica) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=5).text
    prefix = 'jmvae_requests_total{endpoint="/generate",method="POST",status="200"} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


def _wait_both_up(prometheus: str, replicas: list[ImageReplica]) -> None:
    """Both replicas' targets scraped and `up`."""
    deadline = time.monotonic() + 60
    while True:
        try:
            result = httpx.get(f"{prometheus}/api/v1/query", params={"query": 'up{job="jmvae"}'}).json()
            seen = {r["metric"]["instance"]: r["value"][1] for r in result["data"]["result"]}
        except (httpx.TransportError, KeyError, ValueError):
            seen = {}
        if all(seen.get(r.address) == "1" for r in replicas):
            return
        assert time.monotonic() < deadline, seen
        time.sleep(1)
