"""Teacher pairs of DMD's regression loss on the platform (docs/method.md, "Keeping the teacher's diversity").

When `method.regression_weight > 0`, the driver makes `method.regression_pairs` pairs with Ray Data before the
Ray Train run starts: pair i is the teacher's DDIM sample for prompt i of the ordered corpus (cycling when
the corpus holds fewer prompts) from the noise of pair seed i (`loopfree.pairs.pair_seeds`), or with
`method.regression_finish_from` the initial student's sample from that noise finished by the teacher
(`loopfree.pairs.make_refined_pairs`; the initial student is `model.student_dir` or the teacher). So the pairs
depend on the corpus, its seed, the teacher and the method only, not on how the work is split. They are
stored once with the run, `teacher_pairs.safetensors` (written whole or not at all), beside
`teacher_pairs.json` (the settings that made them); a resumed run reuses them, and refuses settings that
would have made other pairs. Every training worker loads them before its loop.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from loopfree.config import DistillConfig
from loopfree.pairs import TeacherPairs, make_refined_pairs, make_teacher_pairs, pair_seeds
from loopfree.presets import Components, load_components, load_student_unet, preset
from loopfree_platform import storage
from loopfree_platform.console import Progress
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.models import local_model_dir

PAIRS_FILE = "teacher_pairs.safetensors"
SETTINGS_FILE = "teacher_pairs.json"


class PairsError(ValueError):
    """Stored pairs that the job's settings would not have made; names both."""


def teacher_components(job: DistillJob) -> Components:
    """The teacher exactly as the training workers build it: the preset with the job's seed, or the model
    directory (an s3:// one through the model cache)."""
    if job.model.preset:
        return preset(job.model.preset).build(seed=job.model.seed)  # same seed: same weights everywhere
    return load_components(local_model_dir(job.model.teacher_dir, job.storage.endpoint_url))


def pair_settings(config: DistillConfig) -> dict:
    """What the stored pairs were made with; a resumed run must ask for the same."""
    settings = {"pairs": config.regression_pairs, "teacher_steps": config.regression_teacher_steps,
                "guidance_scale": config.pair_cfg}
    if config.regression_finish_from is not None:  # absent otherwise, as in runs stored before the key existed
        settings["finish_from"] = config.regression_finish_from
        if config.regression_renoise != "mirrored_z":  # likewise absent for the default
            settings["renoise"] = config.regression_renoise
    return settings


class TeacherSampler:
    """A Ray Data actor holding the teacher's pipeline (and, for refined pairs, the initial student's): a batch of
    (index, prompt, seed) rows in, pairs out."""

    def __init__(self, job: DistillJob):
        from loopfree.pipeline import TiUEPipeline

        components, method = teacher_components(job), job.method
        self.student = None
        if method.regression_finish_from is not None:  # the student training starts from; sampling shares the UNet
            unet = load_student_unet(local_model_dir(job.model.student_dir, job.storage.endpoint_url)) \
                if job.model.student_dir else None
            self.student = TiUEPipeline.for_method(components, method, unet)
        self.pipe = TiUEPipeline.from_components(components)
        for pipe in filter(None, (self.pipe, self.student)):
            pipe.to("cuda" if job.scaling.use_gpu else "cpu")  # Ray gives the actor its own GPU
            pipe.set_progress_bar_config(disable=True)
        self.method = method

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts, seeds = [str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]]
        m, b = self.method, len(prompts)
        if self.student is None:
            pairs = make_teacher_pairs(self.pipe, prompts, seeds, m.regression_teacher_steps, m.pair_cfg, batch_size=b)
        else:
            pairs = make_refined_pairs(self.student, self.pipe, prompts, seeds, m.regression_finish_from,
                                       m.regression_teacher_steps, m.pair_cfg, batch_size=b, renoise=m.regression_renoise)
        return {"index": batch["index"], "noise": pairs.noise.numpy(), "x0": pairs.x0.numpy(),  # (b, C, H, W)
                "input_ids": pairs.input_ids.numpy()}  # (b, 77)


def pair_rows(ordered, unique: int, count: int) -> list[dict]:
    """(index, prompt, seed) of every pair. The first `unique` positions of the ordered corpus are its first
    epoch, each prompt once (corpus.py, "Order")."""
    from ray.data.expressions import col, lit

    first = ordered.filter(expr=col("position") < lit(min(count, unique))).select_columns(["position", "prompt"])
    prompts = [r["prompt"] for r in sorted(first.take_all(), key=lambda r: r["position"])]
    return [{"index": i, "prompt": prompts[i % len(prompts)], "seed": seed} for i, seed in enumerate(pair_seeds(0, count))]


def make_pairs(job: DistillJob, rows: list[dict], progress: Progress) -> TeacherPairs:
    """The pairs of `rows`, made by an actor pool of teachers (one per training worker: their CPUs or GPUs
    are free until the Ray Train run starts), `scaling.batch_per_worker` pairs per call, in index order."""
    import ray.data

    s = job.scaling
    batches = -(-len(rows) // s.batch_per_worker)
    ds = ray.data.from_items(rows).map_batches(
        TeacherSampler, fn_constructor_kwargs={"job": job}, batch_size=s.batch_per_worker, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(s.num_workers, batches)),
        num_cpus=s.cpus_per_worker, num_gpus=1 if s.use_gpu else None)
    parts = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        parts.append(batch)
        progress.phase(f"teacher pairs {sum(len(p['index']) for p in parts)}/{len(rows)}")
    order = np.argsort(np.concatenate([p["index"] for p in parts]), kind="stable")

    def column(name: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([p[name] for p in parts])[order])

    return TeacherPairs(column("noise"), column("x0"), column("input_ids"))


def prepare_teacher_pairs(job: DistillJob, ordered, unique: int, progress: Progress) -> None:
    """Driver side, before the Ray Train run: make and store the run's pairs unless it has them (a resumed
    run). `ordered` is the prepared corpus and `unique` its prompt count."""
    config = job.method
    if config.regression_weight <= 0:
        return
    uri, endpoint = storage.join(job.run_dir(), PAIRS_FILE), job.storage.endpoint_url
    settings, settings_uri = pair_settings(config), storage.join(job.run_dir(), SETTINGS_FILE)
    if storage.exists(uri, endpoint):
        _check_stored(settings, settings_uri, endpoint)
        print(f"teacher pairs: reusing {uri}", flush=True)
        return
    progress.phase(f"teacher pairs 0/{config.regression_pairs}")
    t0 = time.perf_counter()
    pairs = make_pairs(job, pair_rows(ordered, unique, config.regression_pairs), progress)
    storage.write_bytes(settings_uri, json.dumps(settings, indent=1).encode(), endpoint)
    with tempfile.TemporaryDirectory() as d:
        pairs.save(Path(d) / PAIRS_FILE)
        storage.write_bytes(uri, (Path(d) / PAIRS_FILE).read_bytes(), endpoint)  # last: the pairs' "done" mark
    seconds = time.perf_counter() - t0
    print(f"teacher pairs: {len(pairs)} made in {seconds:.1f} s ({len(pairs) / seconds:.2f} pairs/s; "
          f"{settings['teacher_steps']} DDIM steps at guidance {settings['guidance_scale']:g}"
          f"{finished_from(settings)}) -> {uri}", flush=True)


def finished_from(settings: dict) -> str:
    if "finish_from" not in settings:
        return ""
    return (f", the initial student's samples re-noised with {settings.get('renoise', 'mirrored_z')} and finished "
            f"from t = {settings['finish_from']}")


def _check_stored(settings: dict, settings_uri: str, endpoint: str | None) -> None:
    if not storage.exists(settings_uri, endpoint):
        return
    stored = json.loads(storage.read_bytes(settings_uri, endpoint))
    if stored != settings:
        raise PairsError(f"{settings_uri}: the run's teacher pairs were made with {stored}, the job asks for {settings} "
                         "(method.regression_pairs, regression_teacher_steps, regression_guidance_scale, "
                         "regression_finish_from, regression_renoise): keep the run's settings, or use a new run name")


def load_teacher_pairs(job: DistillJob) -> TeacherPairs:
    """Worker side: the pairs the driver stored with the run."""
    data = storage.read_bytes(storage.join(job.run_dir(), PAIRS_FILE), job.storage.endpoint_url)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / PAIRS_FILE).write_bytes(data)
        return TeacherPairs.load(Path(d) / PAIRS_FILE)
