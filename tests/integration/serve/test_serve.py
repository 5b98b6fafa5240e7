"""The Serve application on a real local Ray instance, called over HTTP on 127.0.0.1 as users do.

Two applications share one Serve instance: an open one ("/") and one behind a bearer token ("/secure") that
also takes few requests at a time. The instance's proxy guard (serve/guard.py) allows 5 s for a request's
headers and again for its body, and 4 KiB of headers.
"""

import base64
import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
import PIL.Image
import pytest
import requests
from loopfree_platform.serve.app import start
from loopfree_platform.serve.job import ServeJob
from ray import serve

from tests.slow_clients import STALLS, answered, answers, endless_headers, opened, post, serve_log_sizes, written_since

TOKEN = "s3cret-serve-token-for-tests"
TIMEOUT_S, MAX_HEADER_BYTES = 5, 4096  # the proxy guard's limits here (the defaults are 10 s and 16 KiB)


@pytest.fixture(scope="module")
def server(ray_local, tiny_pipeline_dir, monkeypatch_module, free_port):
    port = free_port()
    serving = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3, "max_prompts_per_request": 4, "max_prompt_chars": 50}
    http = {"port": port, "request_timeout_s": TIMEOUT_S, "max_header_bytes": MAX_HEADER_BYTES}
    job = {"model": {"source": str(tiny_pipeline_dir)}, "serving": serving, "http": http}
    url = start(ServeJob.model_validate({**job, "name": "open"}), route_prefix="/")  # starts Serve and its guard
    monkeypatch_module.setenv("LOOPFREE_SERVE_TOKEN", TOKEN)
    few = {**serving, "max_concurrent_requests": 1, "max_queued_requests": 1, "retry_after_s": 2}
    secure = start(ServeJob.model_validate({**job, "serving": few, "name": "secure", "auth": {"required": True}}),
                   route_prefix="/secure")
    monkeypatch_module.delenv("LOOPFREE_SERVE_TOKEN")
    yield url, secure
    serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def generate(url, body, **kw):
    raw = isinstance(body, (bytes, str)) or hasattr(body, "__next__")  # an iterator: sent chunked
    return requests.post(f"{url}/generate", data=body if raw else json.dumps(body),
                         timeout=120, **kw)


def decode(item) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(item["png_base64"]))))


def test_health_and_model_info(server):
    url, _ = server
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    info = requests.get(f"{url}/model", timeout=30).json()
    assert info["num_steps"] == 4 and len(info["timesteps"]) == 4 and info["mode"] == "tiue"
    assert info["resolution"] == 64 and info["version"].startswith("sha-") and info["max_batch_size"] == 8


def test_same_seed_same_image_and_formats(server):
    url, _ = server
    a = generate(url, {"prompts": ["a red sneaker", "a cat"], "seeds": [7, 0]}).json()["images"]
    b = generate(url, {"prompts": ["a red sneaker"], "seeds": [7]}).json()["images"]
    assert [i["seed"] for i in a] == [7, 0] and decode(a[0]).shape == (64, 64, 3)
    # Batched with another prompt or alone: the same seed gives the same image (to 8-bit rounding).
    assert np.abs(decode(a[0]).astype(int) - decode(b[0]).astype(int)).max() <= 1
    assert np.abs(decode(a[0]).astype(int) - decode(a[1]).astype(int)).max() > 10  # and another seed another one
    png = generate(url, {"prompts": ["a red sneaker"], "seeds": [7], "format": "png"})
    assert png.headers["content-type"] == "image/png" and png.headers["x-loopfree-seed"] == "7"
    assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(png.content))), decode(b[0]))
    zipped = zipfile.ZipFile(io.BytesIO(generate(url, {"prompts": ["a", "b"], "seeds": [1, 2], "format": "png"}).content))
    assert sorted(zipped.namelist()) == ["000.png", "001.png", "images.json"]
    assert [m["seed"] for m in json.loads(zipped.read("images.json"))] == [1, 2]
    unseeded = generate(url, {"prompts": ["a"]}).json()["images"][0]
    assert isinstance(unseeded["seed"], int) and unseeded["seed"] >= 0  # a fresh seed, returned for reproduction


def test_concurrent_requests_share_batches(server):
    url, _ = server
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda i: generate(url, {"prompts": [f"prompt {i}"], "seeds": [i]}), range(12)))
    assert all(r.status_code == 200 for r in replies)
    sizes = [r.json()["images"][0]["batch_size"] for r in replies]
    assert max(sizes) > 1, sizes  # several clients' prompts went through one TiUE pass
    assert all(1 <= s <= 8 for s in sizes)


BAD = [
    (b"{oops", 400, "not valid JSON"),
    ({"prompts": []}, 422, "prompts"),
    ({"seeds": [1]}, 422, "prompts"),
    ({"prompts": [42]}, 422, "prompts[0]: must be a string"),
    ({"prompts": ["a"] * 5}, 413, "at most 4"),
    ({"prompts": ["x" * 51]}, 422, "at most 50"),
    ({"prompts": ["a"], "seeds": [-3]}, 422, "seeds[0]"),
    ({"prompts": ["a"], "seeds": [0.5]}, 422, "seeds[0]"),
    ({"prompts": ["a"], "format": "gif"}, 422, "format"),
]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    url, _ = server
    for body, status, words in BAD:
        reply = generate(url, body)
        assert reply.status_code == status, (body, reply.status_code, reply.text)
        assert words in reply.json()["error"], (body, reply.text)
    assert generate(url, {"prompts": ["still here"], "seeds": [1]}).status_code == 200


def test_token_guards_generate_and_is_never_echoed(server):
    _, secure = server
    body = {"prompts": ["a cat"], "seeds": [3]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        reply = generate(secure, body, headers=headers)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in reply.text
    ok = generate(secure, body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and TOKEN not in ok.text
    assert requests.get(f"{secure}/healthz", timeout=30).status_code == 200  # probes need no token
    assert TOKEN not in requests.get(f"{secure}/model", timeout=30).text


HOSTILE = [
    (b"x" * (2 << 20), 413, "at most 1048576"),  # declared length over serving.max_body_bytes (default 1 MiB)
    (iter([b"x" * 65536] * 40), 413, "more than 1048576"),  # chunked, no declared length: cut while reading
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),  # nesting deeper than the parser's recursion
    (b'{"prompts": ["a"], "seeds": [' + b"9" * 5000 + b"]}", 400, "not valid JSON"),
    (b'{"prompts": ["a bag \\ud83d"]}', 422, "prompts[0]: not valid Unicode"),
    ({"prompts": ["  "]}, 422, "prompts[0]: no visible character"),
    ({"prompts": ["a", "\u200b\u200c\u200d\u2060\ufeff"]}, 422, "prompts[1]: no visible character"),  # zero-width
]


def test_hostile_bodies_get_a_json_4xx_and_never_fail_good_requests_sent_with_them(server):
    url, _ = server
    for body, status, words in HOSTILE:
        reply = generate(url, body)
        assert reply.status_code == status and words in reply.json()["error"], (status, reply.status_code, reply.text[:200])
    bodies = [{"prompts": [f"good {i}"], "seeds": [i]} for i in range(6)] + [b'{"prompts": ["a bag \\ud83d"]}']
    with ThreadPoolExecutor(7) as pool:
        replies = list(pool.map(lambda b: generate(url, b), bodies))
    assert [r.status_code for r in replies] == [200] * 6 + [422]
    assert generate(url, {"prompts": ["sac \u00e0 main \U0001f45c"], "seeds": [1]}).status_code == 200


def test_a_prompt_over_77_tokens_is_served_and_reported_as_truncated(server):
    from loopfree.tokenizer import clip_tokenizer

    url, _ = server
    long, short = "\U0001f45c" * 40, "a red bag"  # 40 characters (the test server allows 50), each several BPE tokens
    assert len(clip_tokenizer()(long).input_ids) > 77 >= len(clip_tokenizer()(short).input_ids)
    images = generate(url, {"prompts": [long, short], "seeds": [1, 2]}).json()["images"]
    assert [i["truncated"] for i in images] == [True, False]


@pytest.mark.timeout(300)
def test_stalled_requests_get_408_or_are_closed_and_never_hold_up_another_clients_requests(server):
    """150 connections from one client stop half-way: more than the open app's 100 ingress slots wait for a
    body. Another client is served meanwhile; every stalled one is answered 408 (closed) or, if it never sent a
    byte, closed, within the time limit (the bound here is generous: the limit plus a minute)."""
    url, _ = server
    kinds = [kind for kind, n in zip(STALLS, (60, 60, 20, 10)) for _ in range(n)]
    stalled = [opened(urlparse(url).port, STALLS[kind]) for kind in kinds]
    started = time.monotonic()
    with requests.Session() as other:
        replies = [other.post(f"{url}/generate", json={"prompts": [f"good {i}"], "seeds": [i]}, timeout=60)
                   for i in range(3)]
    assert [r.status_code for r in replies] == [200] * 3
    assert not any(answered(sock) for sock in stalled), "the stalls were over before the other client was served"
    for kind, answer in zip(kinds, answers(stalled, deadline=started + TIMEOUT_S + 60)):
        assert answer is not None, f"{kind}: still open {TIMEOUT_S + 60} s after it stalled"
        if kind == "nothing sent":
            assert answer == b"", answer
        else:
            assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 5 s" in answer, (kind, answer)
    assert generate(url, {"prompts": ["after"], "seeds": [1]}).status_code == 200


def test_oversized_request_headers_get_431_and_the_connection_is_closed(server):
    url, _ = server
    assert requests.get(f"{url}/healthz", headers={"X-Pad": "a" * 3000}, timeout=30).status_code == 200
    for headers in ({"X-Pad": "a" * 5000}, {f"X-Pad-{i}": "a" * 100 for i in range(60)}):
        reply = requests.get(f"{url}/healthz", headers=headers, timeout=30)
        assert reply.status_code == 431 and f"at most {MAX_HEADER_BYTES}" in reply.json()["error"], reply.text
    answer, sent = endless_headers(urlparse(url).port, limit_bytes=32 << 20)  # a 32 MB header, 8 KiB at a time
    assert answer.startswith(b"HTTP/1.1 431 ") and f"more than {MAX_HEADER_BYTES}".encode() in answer, answer
    assert sent < 1 << 20, f"refused only after {sent} bytes"
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_requests_beyond_the_concurrency_limit_get_503_with_retry_after(server):
    """The secure app takes 1 request at a time and 1 waiting; 12 at once: the rest are told when to retry."""
    _, secure = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda i: generate(secure, {"prompts": [f"p{i}"] * 4, "seeds": [i] * 4}, headers=auth),
                                range(12)))
    codes = sorted(r.status_code for r in replies)
    assert set(codes) == {200, 503}, codes
    assert all(r.headers.get("retry-after") == "2" for r in replies if r.status_code == 503)
    assert generate(secure, {"prompts": ["after"], "seeds": [1]}, headers=auth).status_code == 200


def test_clients_that_hang_up_leave_no_traceback_in_the_logs(server):
    """Hang-ups half-way through a body, and while the images are being made; then Serve's logs of the proxy and
    the open app's replicas are read once they show the cancelled requests."""
    import ray

    url, _ = server
    port = urlparse(url).port
    context = ray.get_runtime_context()  # Ray's log folder: <temp dir>/<session name>/logs
    logs = serve_log_sizes(f"{context.get_temp_dir()}/{context.get_session_name()}/logs", "open")
    body = json.dumps({"prompts": ["a bag"] * 4, "seeds": [1, 2, 3, 4]}).encode()
    for data in [STALLS["declared length never sent"], STALLS["chunked body that never ends"], post(body)] * 3:
        sock = opened(port, data)
        time.sleep(0.1)  # the body half-way, or the batch waiting 0.3 s to fill
        sock.close()
    deadline = time.monotonic() + 60
    while written_since(logs).count("POST /generate CANCELLED") < 3:
        assert time.monotonic() < deadline, f"Serve never logged the cancelled requests:\n{written_since(logs)[-3000:]}"
        time.sleep(0.5)
    time.sleep(2)  # anything logged with the cancellation
    text = written_since(logs)
    for words in ("Traceback", "never retrieved", "TaskCancelledError", "ClientDisconnect"):
        assert words not in text, text[-3000:]
    assert generate(url, {"prompts": ["after"], "seeds": [1]}).status_code == 200


@pytest.mark.timeout(300)
def test_a_replica_killed_mid_batch_fails_its_requests_with_a_503_and_serve_replaces_it(server):
    import os
    import signal
    import time

    import psutil

    url, _ = server

    def replica_pid() -> int | None:
        """The open app's model replica: Ray names its worker process after the actor."""
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if "ServeReplica:open:TiUEModel" in " ".join(proc.info["cmdline"] or []):
                return proc.info["pid"]
        return None

    assert generate(url, {"prompts": ["warm"], "seeds": [0]}).status_code == 200
    victim = replica_pid()
    assert victim
    with ThreadPoolExecutor(16) as pool:  # 16 requests of 4 images: 8 batches of 8, one after another
        futures = [pool.submit(generate, url, {"prompts": [f"p{i}"] * 4, "seeds": [i] * 4}) for i in range(16)]
        deadline = time.monotonic() + 60
        while not any(f.done() for f in futures):  # the first batch is answered: the next ones are queued on it
            assert time.monotonic() < deadline, "the replica never answered the first batch"
            time.sleep(0.01)
        pending = sum(not f.done() for f in futures)
        os.kill(victim, signal.SIGKILL)
        replies = [f.result() for f in futures]
    assert pending, "every request was answered together: nothing was left for the killed replica"
    failed = [r for r in replies if r.status_code != 200]
    assert failed, f"{pending} requests were in flight at the kill and all succeeded"
    for reply in failed:
        assert reply.status_code == 503 and "model replica failed" in reply.json()["error"], reply.text
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # Serve's controller starts a new replica
        if generate(url, {"prompts": ["after"], "seeds": [1]}).status_code == 200:
            break
        time.sleep(2)
    else:
        raise AssertionError("no new replica served within 180 s")
    assert replica_pid() not in (None, victim)
