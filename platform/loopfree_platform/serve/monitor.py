"""The console of ``loopfree serve``: quiet like ``loopfree distill``.

One line when the endpoint is up (its URL and the log file), one traffic line every ``console.every_s`` seconds
(requests, images/s, p95 latency and errors of /generate, from the ingress's `Traffic`), one line when it stops
(Ctrl-C or SIGTERM). Ray's logs and Serve's access logs go to ``<console.log_dir>/<name>/serve.log``;
``--verbose`` leaves them on the terminal (docs/serving.md).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from loopfree_platform.console import LogFile, duration, quiet, say
from loopfree_platform.serve.job import ServeJob


def traffic_line(now: dict, before: dict, elapsed_s: float) -> str:
    """``42 requests (+5), 3.1 images/s, p95 0.41 s, errors 1 (4xx 1, 5xx 0)``: totals, and the rate and p95 of
    the last interval."""
    rate = (now["images"] - before["images"]) / elapsed_s if elapsed_s > 0 else 0.0
    p95 = f"{now['p95_s']:.2f} s" if now["p95_s"] is not None else "-"
    errors = now["client_errors"] + now["server_errors"]
    return (f"{now['requests']} requests (+{now['requests'] - before['requests']}), {rate:.2f} images/s, p95 {p95}, "
            f"errors {errors} (4xx {now['client_errors']}, 5xx {now['server_errors']})")


NO_TRAFFIC = {"requests": 0, "images": 0, "client_errors": 0, "server_errors": 0, "p95_s": None}


def _stop_on_sigterm() -> threading.Event:
    """An event set by SIGTERM (what Kubernetes and process managers send) or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _watch(job: ServeJob, stop: threading.Event) -> tuple[dict, float]:
    """Traffic lines until `stop`; returns the traffic at the stop and the seconds served."""
    from ray import serve

    handle = serve.get_deployment_handle("Ingress", app_name=job.name)

    def poll() -> dict | None:
        try:
            return handle.traffic_summary.remote(job.console.every_s).result(timeout_s=30)
        except Exception as err:  # a replica being replaced: say so, go on
            say(f"{time.strftime('%H:%M:%S')} traffic unknown: {type(err).__name__}")
            return None

    started = last_time = time.monotonic()
    last = NO_TRAFFIC
    while not stop.wait(job.console.every_s):
        now, now_time = poll(), time.monotonic()
        if now is not None:
            say(f"{time.strftime('%H:%M:%S')} {traffic_line(now, last, now_time - last_time)}")
            last, last_time = now, now_time
    return poll() or last, time.monotonic() - started


def run_serve(job: ServeJob, job_path: str, address: str | None, verbose: bool) -> int:
    from loopfree_platform.runtime import release_ray
    from loopfree_platform.serve.app import start

    log = LogFile(Path(job.console.log_dir).resolve() / job.name / "serve.log")
    try:
        with quiet(log, verbose, f"serve {job_path}", release=release_ray):
            url = start(job, address=address)
            stop = _stop_on_sigterm()  # after Ray's start-up, which sets a SIGTERM handler of its own (sys.exit)
            say(f"serving {job.model.source} at {url} (POST /generate, GET /model, GET /healthz); "
                f"log: {log.shown()}; Ctrl-C or SIGTERM stops")
            try:
                last, served_s = _watch(job, stop)
            finally:
                from ray import serve

                serve.shutdown()
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(f"error: {type(err).__name__}: {first}\nfull traceback in the log: {log.shown()}", file=sys.stderr)
        return 1
    print(f"stopped after {duration(served_s)}: {last['requests']} requests, {last['images']} images, "
          f"errors {last['client_errors'] + last['server_errors']}; log: {log.shown()}", flush=True)
    return 0
