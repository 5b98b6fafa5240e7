"""The Ray Serve application: an HTTP ingress (FastAPI) in front of TiUE model replicas.

Each prompt of a request becomes one call to the model deployment's `@serve.batch` method, so prompts
from concurrent requests share one TiUE pass (one encoder + one batched decoder call). Every image
comes back with its seed and the size of the batch it was made in.

    POST /generate  {"prompts": [...], "seeds": [...]?, "format": "base64" | "png"}
    GET  /healthz
    GET  /model     name, version, K, timesteps, resolution, batching settings

`build_app(args)` is the application builder for ``serve run`` / ``serve deploy`` (platform/serve_config.yaml);
``loopfree serve jobs/serve.yaml`` calls it too. Bad requests get a 4xx naming the field; the server goes on.
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation on the
# ingress methods (Serve rebuilds them, and string annotations then resolve to query parameters).
import asyncio
import base64
import hashlib
import hmac
import io
import json
import os
import time
import unicodedata
import zipfile
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from loopfree.images import png_bytes
from loopfree.seeds import SEED_RANGE, is_seed
from loopfree_platform.models import absolute_source
from loopfree_platform.serve.job import ServeApp

FORMATS = ("base64", "png")


async def read_body(request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body: {declared} bytes, at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def run_isolated(run, prompts: list[str], seeds: list[int]) -> list:
    """run(prompts, seeds) for the whole batch; if it fails, each item alone, so one bad item fails only its
    own request: items that fail alone come back as their exception, the others as results."""
    try:
        return run(prompts, seeds)
    except Exception:
        out = []
        for p, s in zip(prompts, seeds):
            try:
                out.extend(run([p], [s]))
            except Exception as err:
                out.append(err)
        return out


# Letters and marks Unicode draws as nothing (Hangul fillers, the Braille blank, the combining grapheme joiner,
# variation selectors): with separators, controls and format characters (zero-width space, joiners, BOM) they
# make a prompt that looks empty.
BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f") | frozenset(map(chr, [*range(0xFE00, 0xFE10),
                                                                                 *range(0xE0100, 0xE01F0)]))


def visible(text: str) -> bool:
    """Whether any character of `text` shows: one that is not a separator or space (Z*), not a control, format
    (zero-width), surrogate, private-use or unassigned code point (C*), and not in BLANK."""
    return any(unicodedata.category(c)[0] not in "ZC" and c not in BLANK for c in text)


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(raw: bytes, max_prompts: int, max_chars: int) -> tuple[list[str], list[int] | None, str]:
    """Validate a /generate body. Pure, so every rule is unit-testable; errors carry the HTTP status."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a 5,000-digit number, deep nesting
        raise RequestError(400, f"body is not valid JSON: {str(err)[:200] or type(err).__name__}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "body must be a JSON object with a 'prompts' list")
    unknown = sorted(set(body) - {"prompts", "seeds", "format"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {unknown}; allowed: prompts, seeds, format")
    prompts, seeds, fmt = body.get("prompts"), body.get("seeds"), body.get("format", "base64")
    if not isinstance(prompts, list) or not prompts:
        raise RequestError(422, "prompts: must be a non-empty list of strings")
    if len(prompts) > max_prompts:
        raise RequestError(413, f"prompts: {len(prompts)} prompts, at most {max_prompts} per request")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise RequestError(422, f"prompts[{i}]: must be a string, got {type(p).__name__}")
        if len(p) > max_chars:
            raise RequestError(422, f"prompts[{i}]: {len(p)} characters, at most {max_chars}")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a lone UTF-16 surrogate ("\ud83d"): no tokenizer can read it
            raise RequestError(422, f"prompts[{i}]: not valid Unicode text (a lone surrogate code point)") from None
        if not visible(p):
            raise RequestError(422, f"prompts[{i}]: no visible character (empty, whitespace, or only zero-width, "
                                    "format or control characters)")
    if seeds is not None:
        if not isinstance(seeds, list) or len(seeds) != len(prompts):
            raise RequestError(422, f"seeds: must be a list with one integer per prompt ({len(prompts)})")
        for i, s in enumerate(seeds):
            if not is_seed(s):
                raise RequestError(422, f"seeds[{i}]: must be an integer in {SEED_RANGE}, got {s!r}")
    if fmt not in FORMATS:
        raise RequestError(422, f"format: must be one of {list(FORMATS)}, got {fmt!r}")
    return prompts, seeds, fmt


@serve.deployment(name="TiUEModel")
class TiUEModel:
    """One model replica. `generate` is batched: Serve hands it the prompts of concurrent requests together."""

    def __init__(self, app: dict[str, Any]):
        from loopfree_platform.models import describe, load_pipeline, resolve

        cfg = ServeApp.model_validate(app)
        src = cfg.model
        model = resolve(src.source, src.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
                        src.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
        self.pipe = load_pipeline(model, src.device, src.dtype)
        self.generate.set_max_batch_size(cfg.serving.max_batch_size)
        self.generate.set_batch_wait_timeout_s(cfg.serving.batch_wait_timeout_s)
        self.about = {**describe(self.pipe, model), "max_batch_size": cfg.serving.max_batch_size,
                      "batch_wait_timeout_s": cfg.serving.batch_wait_timeout_s}

    def info(self) -> dict:
        return self.about

    def _run(self, prompts: list[str], seeds: list[int]) -> list[tuple[bytes, bool]]:
        """(PNG, truncated) per prompt. CLIP reads at most 77 tokens: a longer prompt is cut there, as in
        Stable Diffusion, and the response says so (docs/serving.md)."""
        tok = self.pipe.tokenizer
        truncated = [len(tok(p).input_ids) > tok.model_max_length for p in prompts]
        out = self.pipe(prompts, seeds=seeds, batch_size=len(prompts), output_type="np")
        return [(png_bytes(im), t) for im, t in zip(out.images, truncated)]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # replaced from the app config in __init__
    async def generate(self, items: list[tuple[str, int]]) -> list[dict]:
        prompts, seeds = [p for p, _ in items], [s for _, s in items]
        # In a thread, so the replica keeps queueing the next batch's requests while this one runs.
        pngs = await asyncio.to_thread(run_isolated, self._run, prompts, seeds)
        return [{"error": f"{type(r).__name__}: {r}"} if isinstance(r, Exception) else
                {"png": r[0], "truncated": r[1], "seed": s, "batch_size": len(items)} for r, s in zip(pngs, seeds)]


# Defined before the ingress: serve.ingress captures the FastAPI app (and the globals its routes use) when
# the class is decorated, so helpers defined after it would be missing in the replicas.
def _respond(results: list[dict], fmt: str) -> Response:
    meta = [{"index": i, "seed": r["seed"], "batch_size": r["batch_size"], "truncated": r["truncated"]}
            for i, r in enumerate(results)]
    if fmt == "base64":
        images = [{**m, "png_base64": base64.b64encode(r["png"]).decode()} for m, r in zip(meta, results)]
        return JSONResponse({"images": images})
    if len(results) == 1:
        return Response(results[0]["png"], media_type="image/png",
                        headers={"X-Loopfree-Seed": str(meta[0]["seed"]), "X-Loopfree-Batch-Size": str(meta[0]["batch_size"]),
                                 "X-Loopfree-Truncated": str(meta[0]["truncated"]).lower()})
    buf = io.BytesIO()  # several PNGs: a zip with the images and their seeds
    with zipfile.ZipFile(buf, "w") as zf:
        for m, r in zip(meta, results):
            zf.writestr(f"{m['index']:03d}.png", r["png"])
        zf.writestr("images.json", json.dumps(meta))
    return Response(buf.getvalue(), media_type="application/zip")


class Traffic:
    """What the ingress answered on /generate: totals, and the latencies of the last requests (the console's
    periodic line, serve/monitor.py)."""

    def __init__(self, keep: int = 10_000):
        self.requests = self.images = self.client_errors = self.server_errors = 0
        self.recent: deque[tuple[float, float]] = deque(maxlen=keep)  # (time answered, latency in s)

    def record(self, status: int, images: int, latency_s: float) -> None:
        self.requests += 1
        self.images += images if status == 200 else 0
        self.client_errors += 400 <= status < 500
        self.server_errors += status >= 500
        self.recent.append((time.time(), latency_s))

    def summary(self, window_s: float) -> dict:
        since = time.time() - window_s
        latencies = sorted(lat for t, lat in self.recent if t >= since)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
        return {"requests": self.requests, "images": self.images, "client_errors": self.client_errors,
                "server_errors": self.server_errors, "p95_s": p95}


api = FastAPI(title="Loopfree TiUE", description="Loop-free text-to-image generation (TiUE)")


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, model, app: dict[str, Any], token_sha256: str | None):
        self.model = model
        self.cfg = ServeApp.model_validate(app)
        self.token_sha256 = token_sha256  # only a digest travels: the token never sits in Ray's actor specs
        self.traffic = Traffic()

    def _authorized(self, request: Request) -> bool:
        if self.token_sha256 is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(hashlib.sha256(given.encode()).hexdigest(), self.token_sha256)

    def traffic_summary(self, window_s: float) -> dict:
        return self.traffic.summary(window_s)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/model")
    async def model_info(self) -> dict:
        return await self.model.info.remote()

    @api.post("/generate")
    async def generate(self, request: Request) -> Response:
        start, images, status = time.monotonic(), 0, 500
        try:
            response, images = await self._generate(request)
            status = response.status_code
            return response
        except asyncio.CancelledError:  # the client went away and Serve cancelled the request
            status = 499
            raise
        finally:
            self.traffic.record(status, images, time.monotonic() - start)

    async def _generate(self, request: Request) -> tuple[Response, int]:
        if not self._authorized(request):
            return JSONResponse({"error": "missing or invalid bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"}), 0
        serving = self.cfg.serving
        try:
            body = await read_body(request, serving.max_body_bytes)
            prompts, seeds, fmt = parse_request(body, serving.max_prompts_per_request, serving.max_prompt_chars)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status), 0
        if seeds is None:  # fresh seeds, returned so every image can be reproduced
            seeds = [int.from_bytes(os.urandom(4), "little") >> 1 for _ in prompts]
        try:
            results = await asyncio.gather(*(self.model.generate.remote((p, s)) for p, s in zip(prompts, seeds)))
        except Exception as err:  # e.g. the replica died mid-batch: this request fails, Serve replaces it
            return JSONResponse({"error": f"model replica failed: {type(err).__name__}"}, status_code=503), 0
        failed = [i for i, r in enumerate(results) if "error" in r]
        if failed:  # only this request's own prompts failed; the rest of the batch was served
            return JSONResponse({"error": f"prompts{failed}: could not be generated: {results[failed[0]]['error']}"},
                                status_code=500), 0
        return _respond(results, fmt), len(results)


def token_digest(auth_env: str, required: bool) -> str | None:
    token = os.environ.get(auth_env)
    if not token:
        if required:
            raise RuntimeError(f"auth.required is set but the environment variable {auth_env} is empty or unset")
        return None
    return hashlib.sha256(token.encode()).hexdigest()


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application builder (`serve run loopfree_platform.serve.app:build_app`): validated args -> bound graph."""
    app = ServeApp.model_validate(args)
    s = app.serving
    model = TiUEModel.options(
        autoscaling_config={"min_replicas": s.autoscaling.min_replicas, "max_replicas": s.autoscaling.max_replicas,
                            "target_ongoing_requests": s.autoscaling.target_ongoing_requests},
        max_ongoing_requests=max(2 * s.max_batch_size, 16),  # room to fill the next batch while one runs
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
    ).bind(app.model_dump(mode="json"))
    # Serve's default (5 ongoing requests per replica) would cap every batch at 5 prompts: the ingress only
    # forwards and waits, so let it hold enough requests to fill several batches. Beyond its slots and a short
    # queue, Serve answers 503 with Retry-After instead of letting requests wait without end (docs/serving.md).
    ingress = Ingress.options(
        max_ongoing_requests=s.max_concurrent_requests or max(100, 4 * s.max_batch_size * s.autoscaling.max_replicas),
        max_queued_requests=s.max_queued_requests, backpressure_config={"retry_after_s": s.retry_after_s})
    return ingress.bind(model, app.model_dump(mode="json"), token_digest(app.auth.token_env, app.auth.required))


def app_args(app: ServeApp) -> dict[str, Any]:
    """The app's arguments with a local model path made absolute: replicas run in other folders."""
    args = app.model_dump(mode="json", include={"model", "serving", "auth"})
    args["model"]["source"] = absolute_source(args["model"]["source"])
    return args


def start(job, address: str | None = None, route_prefix: str = "/") -> str:
    """Deploy a ServeJob on a cluster (or a local Ray on 127.0.0.1); returns the application's base URL."""
    from loopfree_platform.runtime import ensure_ray, without_env
    from loopfree_platform.serve.guard import Limits, proxy_env

    application = build_app(app_args(job))  # the token is read here, once; only its digest travels on
    with without_env(job.auth.token_env):  # a local instance's processes, replicas included, never hold it
        ensure_ray(address, serve=True)
    # The proxy guard (serve/guard.py) through the controller's environment, which Serve's proxies inherit; like
    # http_options, it takes effect when this call starts Serve, not on a Serve instance already running.
    limits = Limits(job.http.request_timeout_s, job.http.max_header_bytes, job.serving.max_body_bytes)
    serve.start(http_options={"host": job.http.host, "port": job.http.port},
                controller_options={"runtime_env": {"env_vars": proxy_env(limits)}})
    serve.run(application, name=job.name, route_prefix=route_prefix, blocking=False)
    return f"http://{job.http.host}:{job.http.port}{route_prefix.rstrip('/')}"
