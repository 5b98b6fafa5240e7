"""FID Inception feature throughput (images/s): the plain TorchScript model against our InceptionFeatures,
in one process, and through the evaluation job's Ray Data feature stage (1 actor x 2 threads vs 2 actors
x 1 thread). Images are real Fashion-MNIST test images (28x28 -> 299x299, as the tests use them).

    python -m benchmarks.inception                 # writes benchmarks/results/inception.md (about 1-2 min)
    python -m benchmarks.inception --fid-images 500 --out /tmp/x.md   # plus the 500 vs 500 FID check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.common import machine, write_report
from loopfree.evaldata import read_idx
from loopfree.features import InceptionFeatures, bundled_inception_path

FASHION_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def plain(batch_size: int):
    """The TorchScript model as shipped, fed [-1, 1] float inputs resized to 299 (no freezing, NCHW)."""
    model = torch.jit.load(str(bundled_inception_path())).eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].expand(-1, 3, -1, -1).float() / 127.5 - 1
            out.append(model(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)))
        return torch.cat(out)
    return run


def timed(fn, images: torch.Tensor, rounds: int = 3) -> tuple[float, float]:
    """(best images/s, least CPU seconds per image) of a few rounds. The machine is shared: other load only
    slows a round down, and CPU time per image hardly depends on it, so both compare variants fairly."""
    rates, cpu = [], []
    with torch.inference_mode():
        fn(images[:8])  # warm-up: allocator, graph executor profiling runs
        for _ in range(rounds):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(images)
            rates.append(len(images) / (time.perf_counter() - start))
            cpu.append((time.process_time() - start_cpu) / len(images))
    return max(rates), min(cpu)


def bf16(ext: InceptionFeatures):
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ext(images)
    return run


def bf16_deviation(images: torch.Tensor) -> float:
    """Relative feature error (Frobenius) of bf16 autocast against fp32, on a few images."""
    ext = InceptionFeatures(batch_size=8)
    ref, low = ext(images[:8]), bf16(ext)(images[:8])
    return float((low - ref).norm() / ref.norm())


def ray_rows(images: torch.Tensor, layouts: list[tuple[int, int]]) -> list[tuple[str, float, float]]:
    """(layout, steady images/s after the first batch, wall s incl. actor start) for the job's feature stage."""
    import ray.data
    from loopfree_platform.evaluate.stages import ExtractFeatures
    from loopfree_platform.runtime import ensure_ray

    ensure_ray()
    rgb = images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()
    rows = []
    for workers, threads in layouts:
        ds = ray.data.from_items([{"id": str(i), "prompt": "", "image": im} for i, im in enumerate(rgb)])
        ds = ds.map_batches(ExtractFeatures, batch_size=8, compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=threads, fn_constructor_kwargs=dict(inception_path=None, batch_size=8, clip_dir=None,
                                                                         device="cpu", threads=threads))
        start, first, count, first_n = time.perf_counter(), None, 0, 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            count += len(batch["id"])
            if first is None:
                first, first_n = time.perf_counter(), count
        end = time.perf_counter()
        rows.append((f"Ray Data, {workers} actor(s) x {threads} thread(s)", (count - first_n) / (end - first), end - start))
    return rows


def fid_check(n: int) -> list[str]:
    """FID's sanity check at full size: FID(test[:n], test[n:2n]) against FID(test[:n], uniform noise)."""
    from loopfree.metrics import frechet_distance

    images = read_idx(FASHION_TEST, limit=2 * n)
    noise = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ext = InceptionFeatures(batch_size=8)
    start = time.perf_counter()
    a, b, c = ext(images[:n]), ext(images[n:]), ext(noise)
    seconds = time.perf_counter() - start
    return [f"FID check ({3 * n} images, {3 * n / seconds:.1f} images/s): FID(test[:{n}], test[{n}:{2 * n}]) = "
            f"{frechet_distance(a, b):.2f}, FID(test[:{n}], noise) = {frechet_distance(a, c):.2f}, "
            f"FID(test[:{n}], test[:{n}]) = {frechet_distance(a, a):.2e}.", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16, help="images per round of an in-process row (best of 3 rounds)")
    ap.add_argument("--ray-images", type=int, default=48, help="images per Ray Data row (0: skip)")
    ap.add_argument("--fid-images", type=int, default=0, help="also FID(test[:n], test[n:2n]) vs noise (500: ~3 min)")
    ap.add_argument("--out", default="benchmarks/results/inception.md")
    args = ap.parse_args()
    images = read_idx(FASHION_TEST, limit=max(args.images, args.ray_images))
    subset, load = images[:args.images], os.getloadavg()[0]
    extractors = [("plain TorchScript, batch 1", plain(1), images[:args.images // 2]),
                  ("plain TorchScript, batch 8", plain(8), subset),
                  ("InceptionFeatures (frozen, BN folded, channels-last), batch 8", InceptionFeatures(batch_size=8), subset),
                  ("InceptionFeatures, batch 8, bf16 autocast (not used)", bf16(InceptionFeatures(batch_size=8)), subset)]
    rows = []
    for name, fn, data in extractors:
        rows.append((name, *timed(fn, data)))
        print(f"{name:70s} {rows[-1][1]:6.1f} images/s {rows[-1][2]:6.3f} CPU s/image", flush=True)
    lines = ["# FID Inception feature throughput", "", f"Machine: {machine(torch.device('cpu'))}.",
             f"Fashion-MNIST test images resized to 299x299; in-process rows: best of 3 rounds of {args.images} images "
             f"after a warm-up batch (load average at the start: {load:.2f} on {os.cpu_count()} cores). "
             "Command: `python -m benchmarks.inception " + " ".join(sys.argv[1:]) + "`", "",
             "| extractor | images/s (wall) | CPU s per image |", "|---|---|---|",
             *(f"| {n} | {v:.1f} | {c:.3f} |" for n, v, c in rows), ""]
    if args.ray_images:
        ray_result = ray_rows(images[:args.ray_images], [(1, 2), (2, 1)])
        lines += [f"Evaluation job feature stage (`ExtractFeatures` in Ray Data, batch 8, {args.ray_images} images): steady "
                  "rate after the first batch, and wall time including actor start.", "",
                  "| layout | images/s | wall s |", "|---|---|---|",
                  *(f"| {n} | {v:.1f} | {w:.1f} |" for n, v, w in ray_result), ""]
    lines += [f"bf16 autocast (not used; FID needs fp32 features): relative feature error {bf16_deviation(images):.2e}.", ""]
    if args.fid_images:
        lines += fid_check(args.fid_images)
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
