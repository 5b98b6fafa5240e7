"""Serving throughput and latency: Ray Serve batching on versus `max_batch_size=1`, same process, same model.

Two applications of the same saved pipeline run side by side on one local Ray instance (127.0.0.1 only):
"/batched" (max_batch_size 16) and "/single" (max_batch_size 1). For each number of concurrent clients,
every client sends one-prompt requests back to back; the two apps are measured alternately, so machine
noise hits both. Reports images/s and p50/p95 request latency, and the batch sizes the server used.

    python -m benchmarks.serving                       # tiny preset, 1/4/16 clients
    python -m benchmarks.serving --preset sd21_base --latent 16 --requests 16 --clients 1 4
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.common import write_report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_pipeline(preset_name: str, latent: int | None, folder: str) -> None:
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import preset

    components = preset(preset_name).build(seed=0)
    if latent:  # a smaller latent keeps the SD2.1-base architecture but makes a CPU run finish
        components.unet.register_to_config(sample_size=latent)
    TiUEPipeline.from_components(components, num_steps=4).save_pretrained(folder)


def one_request(url: str, i: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    reply = requests.post(f"{url}/generate", data=json.dumps({"prompts": [f"prompt number {i}"], "seeds": [i]}), timeout=600)
    reply.raise_for_status()
    return time.perf_counter() - t0, reply.json()["images"][0]["batch_size"]


def load(url: str, clients: int, total: int) -> dict:
    """`clients` threads share `total` one-prompt requests; returns throughput, latency percentiles, batch sizes."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(url, i), range(total)))
    wall = time.perf_counter() - t0
    latencies = sorted(r[0] for r in results)
    sizes = [r[1] for r in results]
    return {"img_s": total / wall, "p50": statistics.median(latencies) * 1000,
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] * 1000,
            "mean_batch": statistics.mean(sizes), "max_batch": max(sizes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "sd21_base"])
    ap.add_argument("--latent", type=int, default=None, help="override the latent size (sd21_base on a CPU: 16)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=64, help="requests per (app, clients) measurement")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/serving.md")
    args = ap.parse_args()

    from loopfree_platform.serve.app import start
    from loopfree_platform.serve.job import ServeJob
    from ray import serve

    folder = tempfile.mkdtemp(prefix="loopfree-serving-")
    save_pipeline(args.preset, args.latent, folder)
    port = free_port()
    urls = {}
    for name, size in (("batched", args.max_batch_size), ("single", 1)):
        job = ServeJob.model_validate({"name": name, "model": {"source": folder}, "http": {"port": port},
                                       "serving": {"max_batch_size": size, "batch_wait_timeout_s": 0.02}})
        urls[name] = start(job, route_prefix=f"/{name}")
        one_request(urls[name], 0)  # warm-up: first call pays lazy initialisation
    rows = []
    for clients in args.clients:
        for name in ("single", "batched"):
            r = load(urls[name], clients, args.requests)
            rows.append((clients, name, r))
            print(f"{clients:3d} clients  {name:8s} {r['img_s']:7.2f} img/s  p50 {r['p50']:8.1f} ms  p95 {r['p95']:8.1f} ms  "
                  f"mean batch {r['mean_batch']:.2f}", flush=True)
    serve.shutdown()
    return write_report(args.out, report(args, rows))


def report(args, rows) -> list[str]:
    import torch

    from benchmarks.common import machine

    shape = f"{args.preset}" + (f", latent {args.latent}x{args.latent}" if args.latent else "")
    lines = [f"# Serving: Ray Serve batching (max_batch_size {args.max_batch_size}) vs max_batch_size 1 ({shape})", "",
             f"Machine: {machine(torch.device('cpu'))}. One model replica per app (1 logical CPU), HTTP on 127.0.0.1.",
             f"Each cell: {args.requests} one-prompt requests shared by the clients, sent back to back; "
             "apps measured alternately.",
             f"Command: `python -m benchmarks.serving --preset {args.preset}"
             + (f" --latent {args.latent}" if args.latent else "")
             + f" --clients {' '.join(map(str, args.clients))} --requests {args.requests}`", "",
             "| clients | batching | images/s | p50 latency (ms) | p95 latency (ms) | mean batch | max batch |",
             "|---|---|---|---|---|---|---|"]
    for clients, name, r in rows:
        label = f"on ({args.max_batch_size})" if name == "batched" else "off (1)"
        lines.append(f"| {clients} | {label} | {r['img_s']:.2f} | {r['p50']:.1f} | {r['p95']:.1f} | "
                     f"{r['mean_batch']:.2f} | {r['max_batch']} |")
    lines.append("")
    by = {(c, n): r for c, n, r in rows}
    for clients in args.clients:
        lines.append(f"- {clients} clients: batched / unbatched throughput "
                     f"**{by[(clients, 'batched')]['img_s'] / by[(clients, 'single')]['img_s']:.2f}x**, "
                     f"p95 latency {by[(clients, 'batched')]['p95'] / by[(clients, 'single')]['p95']:.2f}x")
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
