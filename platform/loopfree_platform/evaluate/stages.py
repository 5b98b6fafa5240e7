"""Stages of an evaluation job: generate with each system, extract features, compare with the reference.

Ray Data parallelises both stages: generation actors (each holding one copy of the system) stream images
to feature actors (each holding the Inception network, and CLIP when a CLIP folder is given); only
features come back to the driver, which shows a progress bar and computes the metrics
(`loopfree.metrics`). Reference statistics are cached by the content hash of the images used, the
extractor file and the preprocessing, so re-evaluating against COCO-30K costs its features once.
Images saved by the job (`output.save_images`) are written by the generation actors: on a multi-node
cluster, point `output.dir` at a shared file system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from loopfree.evaldata import list_images, load_image
from loopfree.features import ClipEmbedder, FeatureExtractor, InceptionFeatures
from loopfree.metrics import clip_score, frechet_distance, frechet_distance_from_stats, gaussian_stats, prdc
from loopfree.systems import SystemConfig, load_system, steps_label
from loopfree_platform.evaluate.job import EvaluateJob, SystemSection
from loopfree_platform.reference import Reference, cache_path, load_stats, reference_items, save_features


@dataclass
class SystemResult:
    name: str
    steps: str
    images: int
    fid: float
    clip: float | None = None
    prdc: dict[str, float] = field(default_factory=dict)


# -- Ray Data stages (constructed inside actors) ----------------------------------------------------
class GenerateImages:
    """Actor: loads one system; batches of (id, prompt, seed) -> uint8 images (B, H, W, 3)."""

    def __init__(self, config: SystemConfig, device: str, batch_size: int, image_dir: str | None, threads: int):
        torch.set_num_threads(threads)
        if config.model_dir and config.model_dir.startswith("s3://"):
            from loopfree_platform.models import local_model_dir

            config = SystemConfig(**{**config.__dict__, "model_dir": str(local_model_dir(config.model_dir, None))})
        self.generate, _ = load_system(config, device, batch_size)
        self.image_dir = Path(image_dir) if image_dir else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = self.generate([str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]])  # (B, 3, H, W)
        hwc = images.permute(0, 2, 3, 1).numpy()
        if self.image_dir is not None:
            import PIL.Image

            self.image_dir.mkdir(parents=True, exist_ok=True)
            for image_id, im in zip(batch["id"], hwc):
                PIL.Image.fromarray(im).save(self.image_dir / f"{image_id}.png")
        return {"id": batch["id"], "prompt": batch["prompt"], "image": hwc}


def load_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Image files -> uint8 (B, H, W, 3), or an object array of (H, W, 3) when sizes differ."""
    images = [load_image(p).permute(1, 2, 0).numpy() for p in batch["path"]]
    if len({im.shape for im in images}) == 1:
        stacked = np.stack(images)
    else:
        stacked = np.empty(len(images), dtype=object)
        stacked[:] = images
    return {"id": batch["id"], "prompt": batch["prompt"], "image": stacked}


class ExtractFeatures:
    """Actor: uint8 images -> Inception features, plus CLIP image and text embeddings when clip_dir is set."""

    def __init__(self, inception_path: str | None, batch_size: int, clip_dir: str | None, device: str, threads: int):
        torch.set_num_threads(threads)
        self.inception = InceptionFeatures(inception_path, device, batch_size)
        self.clip = ClipEmbedder.from_dir(clip_dir, device) if clip_dir else None

    @staticmethod
    def _apply(fn: FeatureExtractor, images: np.ndarray) -> torch.Tensor:
        # torch.tensor copies: Ray hands batches over as read-only views of its object store.
        if images.dtype != object:
            return fn(torch.tensor(images).permute(0, 3, 1, 2))
        return torch.cat([fn(torch.tensor(im).permute(2, 0, 1)[None]) for im in images])  # ragged sizes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"id": batch["id"], "inception": self._apply(self.inception, batch["image"]).numpy()}
        if self.clip is not None:
            out["clip_image"] = self._apply(self.clip, batch["image"]).numpy()
            out["clip_text"] = self.clip.text([str(p) for p in batch["prompt"]]).numpy()
        return out


# -- datasets ---------------------------------------------------------------------------------------
def _resources(job: EvaluateJob) -> dict:
    s = job.scaling
    return {"num_gpus": 1, "num_cpus": s.cpus_per_worker} if s.use_gpu else {"num_cpus": s.cpus_per_worker}


def _device(job: EvaluateJob) -> str:
    return "cuda" if job.scaling.use_gpu else "cpu"


def _image_dataset(items: list[dict]):
    """Rows with "image" arrays, or with file "path"s that are loaded in Ray tasks."""
    import ray.data

    ds = ray.data.from_items(items)
    return ds.map_batches(load_files, batch_size=16) if items and "path" in items[0] else ds


def _generated_dataset(job: EvaluateJob, system: SystemSection, prompts: list[tuple[str, str]]):
    import ray.data

    s = job.scaling
    items = [{"id": pid, "prompt": p, "seed": job.seed + i} for i, (pid, p) in enumerate(prompts)]
    image_dir = str(job.out_dir() / "images" / _slug(system.name)) if job.output.save_images else None
    return ray.data.from_items(items).map_batches(
        GenerateImages, batch_size=s.batch_size, compute=ray.data.ActorPoolStrategy(size=s.generation_workers),
        **_resources(job),
        fn_constructor_kwargs=dict(config=system.system_config(s.dtype), device=_device(job),
                                   batch_size=s.batch_size, image_dir=image_dir, threads=s.cpus_per_worker))


def _features(job: EvaluateJob, ds, total: int, desc: str, clip: bool) -> dict[str, np.ndarray]:
    """Run the feature stage; collect the features in the driver, in prompt order, with a progress bar."""
    import ray.data

    from loopfree_platform.console import task

    m = job.metrics
    ds = ds.map_batches(ExtractFeatures, batch_size=m.inception_batch_size,
                        compute=ray.data.ActorPoolStrategy(size=job.scaling.feature_workers), **_resources(job),
                        fn_constructor_kwargs=dict(inception_path=m.inception_path, batch_size=m.inception_batch_size,
                                                   clip_dir=m.clip_dir if clip else None, device=_device(job),
                                                   threads=job.scaling.cpus_per_worker))
    parts: dict[str, list[np.ndarray]] = {}
    with task(total, desc, unit="img") as bar:  # the command's one bar, or a bar of its own
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
            bar.update(len(batch["id"]))
    return {key: np.concatenate(value) for key, value in parts.items()}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "system"


# -- reference --------------------------------------------------------------------------------------
def reference(job: EvaluateJob) -> Reference:
    """Saved statistics (.npz with mu, sigma, optional features), or features of the reference images,
    computed by the Ray Data feature stage and cached (`loopfree_platform.reference`)."""
    if job.reference.stats:
        return load_stats(job.reference.stats)
    items, digest = reference_items(job.reference, job.metrics.inception_path)
    cache = cache_path(job.output.cache_dir, digest)
    if cache.is_file():
        print(f"reference statistics: cached, {cache}", flush=True)
        return load_stats(str(cache))
    features = torch.from_numpy(_features(job, _image_dataset(items), len(items), "reference", clip=False)["inception"])
    print(f"reference statistics: {len(features)} images, cached as {cache}", flush=True)
    return save_features(cache, features)


# -- systems ----------------------------------------------------------------------------------------
def _folder_items(system: SystemSection, prompts: list[tuple[str, str]]) -> tuple[list[dict], bool]:
    """A folder of images: paired with the prompts when every prompt id has an image (<id>.<ext>), else all
    of its images without prompts (FID and PRDC only). Returns (rows, paired)."""
    files = list_images(system.images_dir)
    by_id = {f.stem: f for f in files}
    if all(pid in by_id for pid, _ in prompts):
        return [{"id": pid, "prompt": p, "path": str(by_id[pid])} for pid, p in prompts], True
    return [{"id": f.stem, "prompt": "", "path": str(f)} for f in files], False


def evaluate_system(job: EvaluateJob, system: SystemSection, prompts: list[tuple[str, str]], ref: Reference) -> SystemResult:
    clip = job.metrics.clip_dir is not None
    if system.kind == "images":
        items, paired = _folder_items(system, prompts)
        if clip and not paired:
            print(f"{system.name}: images are not named by prompt id; CLIP score skipped for this row", flush=True)
        ds, steps, clip = _image_dataset(items), system.steps or "-", clip and paired
    else:
        items = prompts
        ds = _generated_dataset(job, system, prompts)
        steps = system.steps or steps_label(system.system_config())
    out = _features(job, ds, len(items), system.name, clip)
    features = torch.from_numpy(out["inception"])
    fid = frechet_distance(ref.features, features) if ref.features is not None else \
        frechet_distance_from_stats(ref.stats, gaussian_stats(features))
    result = SystemResult(system.name, steps, len(features), fid)
    if clip:
        result.clip = clip_score(torch.from_numpy(out["clip_image"]), torch.from_numpy(out["clip_text"]))
    if job.metrics.prdc and ref.features is not None:
        result.prdc = prdc(ref.features, features, k=job.metrics.nearest_k)
    return result
