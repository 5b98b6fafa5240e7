"""The local Ray instance a CLI command starts, seen from outside as an operator would: `loopfree serve` run
in a shell that exports nothing Ray-specific, then every process it started is inspected through /proc.

One start serves three checks (a local Ray plus Serve takes half a minute on 2 cores): every listening socket
is on 127.0.0.1, the bearer token is in no process's environment but the driver's, and the console stays quiet
until SIGTERM stops it.
"""

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests
import yaml

from tests.sockets import beyond_loopback, listeners

TOKEN = "tok-only-the-driver-may-hold-this"


@pytest.fixture(scope="module")
def serve_cli(tiny_pipeline_dir, tmp_path_factory, free_port):
    """`loopfree serve` in its own process group, started the way a user starts it; yields (driver, url). Its
    serve.log is `<folder of driver.job>/logs/loopback/serve.log`."""
    # nothing exported for Ray, nor for OpenMP (the suite sets its wait policy for every process it starts)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "OMP_"))}
    env["LOOPFREE_SERVE_TOKEN"] = TOKEN
    for attempt in range(3):  # a port free when picked can be taken by the new Ray instance before Serve binds it
        port = free_port()
        job = tmp_path_factory.mktemp("serve-cli") / "serve.yaml"
        job.write_text(yaml.safe_dump({"name": "loopback", "model": {"source": str(tiny_pipeline_dir)},
                                       "auth": {"required": True}, "http": {"host": "127.0.0.1", "port": port},
                                       "console": {"log_dir": str(job.parent / "logs"), "every_s": 2}}))
        driver = subprocess.Popen([sys.executable, "-m", "loopfree_platform.cli", "serve", str(job)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(driver, url)
            break
        except AssertionError as err:
            if "Address already in use" not in str(err) or attempt == 2:
                raise
    driver.job = job
    try:
        yield driver, url
    finally:
        started = _tree(psutil.Process(driver.pid)) if driver.poll() is None else []
        driver.send_signal(signal.SIGINT)  # the CLI's own stop: Serve shuts down, Ray with the driver
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
        for proc in started:  # only what this driver started, by PID
            if proc.is_running():
                proc.kill()


def _wait_healthy(driver: subprocess.Popen, url: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"loopfree serve exited {driver.returncode}:\n{driver.stdout.read()}")
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # proxy up before the app, or busy starting
            pass
        time.sleep(1)
    raise AssertionError("loopfree serve did not become healthy")


def _tree(driver: psutil.Process) -> list[psutil.Process]:
    return [driver, *driver.children(recursive=True)]


@pytest.mark.timeout(400)
def test_every_socket_the_cli_local_ray_listens_on_is_loopback(serve_cli):
    driver = psutil.Process(serve_cli[0].pid)
    listening = listeners(_tree(driver))
    assert len({pid for pid, *_ in listening}) >= 4, listening  # GCS, raylet, agents, proxy, replicas
    assert not beyond_loopback(listening), f"listening beyond loopback: {beyond_loopback(listening)}"


@pytest.mark.timeout(400)
def test_the_serve_token_is_in_no_ray_process_environment_openmp_waits_passively_and_generate_is_guarded(serve_cli):
    driver, url = psutil.Process(serve_cli[0].pid), serve_cli[1]
    holders = [(proc.pid, " ".join(proc.cmdline())[:80]) for proc in _tree(driver)
               if TOKEN.encode() in open(f"/proc/{proc.pid}/environ", "rb").read()]
    assert holders == [(driver.pid, " ".join(driver.cmdline())[:80])], holders  # the driver's own shell env only
    # every process of the local instance waits passively in OpenMP. Ray's two agents retitle themselves
    # ("ray::DashboardAgent"), which zeroes the start of their environment block: seen from /proc it begins with
    # NUL bytes and has lost its first variables, which may be this one (it was, in two runs). Only blocks that
    # begin with a variable are judged; the agents inherit theirs from the raylet, which is judged.
    environs = [(" ".join(proc.cmdline()).strip(), open(f"/proc/{proc.pid}/environ", "rb").read())
                for proc in _tree(driver)[1:]]
    intact = [(name, env.split(b"\0")) for name, env in environs if env[:1] not in (b"", b"\0")]
    assert len(intact) >= 4, [name for name, _ in environs]  # GCS, raylet, Serve's controller, proxy, replica
    assert not [name for name, variables in intact if b"OMP_WAIT_POLICY=PASSIVE" not in variables]
    assert len(_tree(driver)) >= 6  # the replicas were inspected too, not only the driver
    body = {"prompts": ["a bag"], "seeds": [1]}
    assert requests.post(f"{url}/generate", json=body, timeout=120).status_code == 401
    ok = requests.post(f"{url}/generate", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert ok.status_code == 200, ok.text



TRAFFIC = re.compile(r"\d\d:\d\d:\d\d \d+ requests \(\+\d+\), [\d.]+ images/s, p95 ([\d.]+ s|-), "
                     r"errors \d+ \(4xx \d+, 5xx \d+\)")


def _read_available(fd: int) -> str:
    """What the driver has printed so far, without waiting for more."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.timeout(400)
def test_the_console_shows_the_url_traffic_lines_and_a_summary_at_sigterm_and_nothing_else(serve_cli):
    """Ray's logs and the access logs go to serve.log; SIGTERM (what Kubernetes sends) stops it with exit 0.
    Runs last: it stops the module's server."""
    driver, url = serve_cli
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(3):
        assert requests.post(f"{url}/generate", json={"prompts": ["a bag"], "seeds": [i]}, headers=auth,
                             timeout=120).status_code == 200
    fd = driver.stdout.fileno()
    os.set_blocking(fd, False)
    seen, deadline = "", time.monotonic() + 120
    while max(map(int, re.findall(r"(\d+) requests \(", seen)), default=0) < 3:  # a traffic line counting them
        assert time.monotonic() < deadline and driver.poll() is None, seen
        seen += _read_available(fd)
        time.sleep(0.5)
    started = _tree(psutil.Process(driver.pid))
    driver.send_signal(signal.SIGTERM)
    try:
        assert driver.wait(timeout=120) == 0
    finally:
        for proc in started:  # only what this driver started, by PID
            if proc.is_running():
                proc.kill()
    lines = (seen + _read_available(fd)).splitlines()
    log = driver.job.parent / "logs" / "loopback" / "serve.log"
    assert lines[0].startswith("serving ") and f" at {url} (POST /generate" in lines[0], lines
    assert lines[0].endswith(f"; log: {log}; Ctrl-C or SIGTERM stops"), lines
    assert re.fullmatch(r"stopped after .*: \d+ requests, \d+ images, errors \d+; log: " + re.escape(str(log)), lines[-1])
    assert lines[1:-1] and all(TRAFFIC.fullmatch(line) for line in lines[1:-1]), lines
    text = log.read_text()
    assert "ServeReplica:loopback:Ingress" in text and "POST /generate 200" in text  # what the console left out
