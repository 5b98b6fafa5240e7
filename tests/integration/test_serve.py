"""The Serve application on a real local Ray instance, called over HTTP on 127.0.0.1 as users do.

Two applications share one Serve instance: an open one ("/") and one behind a bearer token ("/secure").
"""

import base64
import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import requests
from loopfree_platform.serve.app import start
from loopfree_platform.serve.job import ServeJob
from ray import serve

TOKEN = "s3cret-serve-token-for-tests"


@pytest.fixture(scope="module")
def server(ray_local, tiny_pipeline_dir, monkeypatch_module, free_port):
    port = free_port()
    serving = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3, "max_prompts_per_request": 4, "max_prompt_chars": 50}
    job = {"model": {"source": str(tiny_pipeline_dir)}, "serving": serving, "http": {"port": port}}
    url = start(ServeJob.model_validate({**job, "name": "open"}), route_prefix="/")
    monkeypatch_module.setenv("LOOPFREE_SERVE_TOKEN", TOKEN)
    secure = start(ServeJob.model_validate({**job, "name": "secure", "auth": {"required": True}}), route_prefix="/secure")
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
