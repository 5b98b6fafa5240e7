"""The distillation job file: a typed, validated schema loaded from YAML.

Everything that can be checked without a cluster is checked here, in the driver, before Ray starts:
unknown keys, wrong types, impossible combinations, missing model directories, bad storage URIs.
Errors name the key (``data.format: ...``). The DeepSpeed JSON is generated from the job, never written
by hand (`deepspeed_config`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, PlainValidator, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from loopfree.config import RENAMED, ConfigError, DistillConfig
from loopfree.exports import student_unet_dir
from loopfree.seeds import MAX_SEED, span_error
from loopfree_platform import storage
from loopfree_platform.jobfile import NAME_PATTERN, JobError, Section, validate_file
from loopfree_platform.reference import ReferenceSection
from loopfree_platform.runtime import submitted_upload

RESOLVED = "job.resolved.yaml"  # in the run folder: the job as it runs (driver.py), secrets redacted


class ModelSection(Section):
    preset: Literal["tiny"] | None = Field(None, description="random-initialised preset (tests, smoke runs)")
    teacher_dir: str | None = Field(None, description="teacher in diffusers layout: local directory or s3:// prefix")
    student_dir: str | None = Field(None, description="student UNet initialisation (default: the teacher's UNet)")
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.teacher_dir is None):
            raise ValueError("set exactly one of model.preset and model.teacher_dir")
        return self


class DataSection(Section):
    paths: list[str] = Field(min_length=1, description="files or folders, local or s3://")
    format: Literal["journeydb", "parquet", "text", "tsv"] = "journeydb"
    column: str | None = Field(None, description="prompt column for parquet / tsv")
    on_bad_record: Literal["skip", "error"] = "skip"
    epochs: int = Field(1, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _column(self):
        if self.format in ("parquet", "tsv") and not self.column:
            raise ValueError(f"data.column is required for format {self.format!r}")
        return self


class ScalingSection(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    global_batch_size: int = Field(1, ge=1)

    @property
    def batch_per_worker(self) -> int:
        return self.global_batch_size // self.num_workers


class DeepSpeedSection(Section):
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False


class StorageSection(Section):
    path: str = "runs"
    endpoint_url: str | None = Field(None, description="S3 endpoint; default: AWS_ENDPOINT_URL or AWS itself")

    @field_validator("path")
    @classmethod
    def _uri(cls, v: str) -> str:
        if "://" in v and not v.startswith("s3://"):
            raise ValueError(f"must be a local folder or an s3://bucket/prefix URI, got {v!r}")
        if v.startswith("s3://") and not v[5:].split("/")[0]:
            raise ValueError(f"s3 URI needs a bucket: {v!r}")
        return v


class TrackingSection(Section):
    enabled: bool = True
    mlflow_uri: str | None = Field(None, description="default: MLFLOW_TRACKING_URI, else sqlite in the runs folder")
    experiment: str = "loopfree"
    optional: bool = Field(False, description="an unreachable server only warns instead of failing the job")
    registered_model: str | None = Field("loopfree-tiue", description="register the exported model under this name")
    alias: str = "candidate"
    parent_run_id: str | None = Field(None, description="nest the run under this MLflow run (set by sweeps)")


class CheckpointSection(Section):
    every_steps: int = Field(50, ge=1)
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)


class TrainingSection(Section):
    max_steps: int = Field(ge=1)
    log_every: int = Field(1, ge=1)
    max_nonfinite_in_a_row: int = Field(5, ge=1)
    fail_at_step: int | None = Field(None, description="test only: the last rank dies once at this step")
    inject_nonfinite_at: list[int] = Field(default_factory=list, description="test only: rank 0's loss is NaN at these steps")


class SamplingSection(Section):
    every_steps: int = Field(100, ge=1)
    prompts: list[str] = Field(default_factory=lambda: ["a photo of a cat", "a red sneaker", "a lighthouse at dusk",
                                                        "a bowl of fruit"], min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = None  # each below 2**32, as every image seed

    @model_validator(mode="after")
    def _seeds(self):
        if self.seeds is not None and len(self.seeds) != len(self.prompts):
            raise ValueError("sampling.seeds must hold one seed per sampling prompt")
        return self


class EvaluationSection(Section):
    """Evaluation during training (docs/evaluation.md): every `every_steps` steps and at the end, the EMA
    student generates `num_images` images on fixed prompts and seeds, split over the workers, and rank 0
    logs FID, PRDC and alignment as `eval/...` metrics at that step."""

    every_steps: int = Field(ge=1)
    num_images: int = Field(200, ge=2, description="images per evaluation (image i: prompt i mod P, seed seed + i)")
    prompts: list[str] | None = Field(None, min_length=1, description="default: sampling.prompts")
    prompts_path: str | None = Field(None, description="a text file, one prompt per line (instead of prompts)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="below 2**32 (loopfree.seeds)")
    at_start: bool = Field(True, description="also evaluate the initial student (step 0) of a fresh run")
    reference: ReferenceSection
    classifier_dir: str | None = Field(None, description="alignment: classifier folder (loopfree.classifier)")
    clip_dir: str | None = Field(None, description="alignment: local transformers CLIPModel folder (CLIP score)")
    inception_path: str | None = Field(None, description="FID Inception TorchScript (default: the bundled one)")
    nearest_k: int = Field(5, ge=1)
    batch_size: int = Field(50, ge=1)
    cache_dir: str = Field("runs/eval-cache", description="reference features, keyed by content hash")

    @model_validator(mode="after")
    def _prompt_source(self):
        if self.prompts is not None and self.prompts_path is not None:
            raise ValueError("set at most one of evaluation.prompts and evaluation.prompts_path")
        if self.nearest_k >= self.num_images:  # precision/recall need k neighbours among the generated images
            raise ValueError(f"evaluation.nearest_k ({self.nearest_k}) must be below evaluation.num_images "
                             f"({self.num_images})")
        if error := span_error("evaluation.seed", self.seed, self.num_images):
            raise ValueError(error)
        return self

    def local_paths(self) -> list[tuple[str, str | None]]:
        return [("evaluation.prompts_path", self.prompts_path), ("evaluation.reference.images", self.reference.images),
                ("evaluation.reference.stats", self.reference.stats), ("evaluation.classifier_dir", self.classifier_dir),
                ("evaluation.clip_dir", self.clip_dir), ("evaluation.inception_path", self.inception_path)]


METHOD_FIELDS = tuple(f.name for f in dataclasses.fields(DistillConfig) if f.name != "extra")


@functools.cache
def _field_type(name: str) -> TypeAdapter:
    return TypeAdapter(typing.get_type_hints(DistillConfig)[name])


def _config_errors(problems: list[str]) -> list[tuple[tuple, str]]:
    """DistillConfig's problems ("<key> ...", "unknown keys [...]") as (key path, text) pairs."""
    errors: list[tuple[tuple, str]] = []
    for part in problems:
        word = re.match(r"\w*", part)[0]
        if part.startswith("unknown keys ["):
            for key in ast.literal_eval(part.removeprefix("unknown keys ")):
                near = difflib.get_close_matches(key, METHOD_FIELDS, n=1)
                errors.append(((key,), "unknown key" + (f" (did you mean {near[0]}?)" if near else "")))
        elif word in RENAMED:
            errors.append(((word,), f"was renamed: use method.{RENAMED[word]} (docs/jobs.md)"))
        elif word in METHOD_FIELDS:
            rest = part[len(word):]
            errors.append(((word,), rest.lstrip(": ") if rest[:1] in (" ", ":") else part))
        else:
            errors.append(((), part))
    return errors


def load_method(value: Any) -> DistillConfig:
    """The `method` section as the typed DistillConfig, the one place a job's method is built (docs/jobs.md):
    wrong types, unknown or renamed keys and DistillConfig's own checks are reported per key, each error
    under its dotted path (``method.num_steps: ...``)."""
    if isinstance(value, DistillConfig):  # already built (a copy of a validated job)
        return value
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of loopfree.DistillConfig fields")
    errors = []
    for name in [n for n in METHOD_FIELDS if n in value]:
        item = tuple(value[name]) if isinstance(value[name], list) else value[name]  # YAML lists are tuples here
        try:
            _field_type(name).validate_python(item, strict=True)
        except ValidationError as err:
            errors += [((name, *e["loc"]), e["msg"].replace("a valid tuple", "a list").replace("Tuple ", "List "))
                       for e in err.errors()]
    if not errors:
        try:
            config = DistillConfig.from_dict(value)
        except ConfigError as err:
            errors = _config_errors(err.problems)
        else:
            errors = list(_unsupported(config))
            if not errors:
                return config
    raise ValidationError.from_exception_data("method", [
        InitErrorDetails(type=PydanticCustomError("value_error", "{message}", {"message": text}), loc=key, input=value)
        for key, text in errors])


def _unsupported(config: DistillConfig):
    """Library options the platform does not run yet: refused at load rather than silently ignored."""
    if config.gan_weight > 0:
        yield (("gan_weight",), "DMD2's GAN term needs real training images, which the platform's workers do not "
                                "load yet: it is study-only for now (benchmarks/fashion/study.py; docs/jobs.md). "
                                "Use 0")
    if config.divergence != "reverse_kl":
        yield (("divergence",), "an f-divergence other than reverse_kl needs the discriminator's real training "
                                "images, which the platform's workers do not load yet: it is study-only for now "
                                "(benchmarks/fashion/study.py; docs/jobs.md). Use reverse_kl")


def _method_data(config: DistillConfig) -> dict[str, Any]:
    """Every field, defaults included, as plain YAML data (what --dry-run prints and job.resolved.yaml holds)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}


Method = Annotated[DistillConfig, PlainValidator(load_method), PlainSerializer(_method_data)]


class DistillJob(Section):
    name: str = Field(pattern=NAME_PATTERN, description="run name; re-running it resumes")
    model: ModelSection
    data: DataSection
    method: Method = Field(default_factory=DistillConfig, description="loopfree.DistillConfig: the method's settings")
    scaling: ScalingSection = ScalingSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    storage: StorageSection = StorageSection()
    tracking: TrackingSection = TrackingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    training: TrainingSection
    sampling: SamplingSection = SamplingSection()
    evaluation: EvaluationSection | None = None

    @model_validator(mode="after")
    def _combinations(self):
        if self.scaling.global_batch_size % self.scaling.num_workers:
            raise ValueError(f"scaling.global_batch_size ({self.scaling.global_batch_size}) must be divisible by "
                             f"scaling.num_workers ({self.scaling.num_workers})")
        if self.deepspeed.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("deepspeed.precision fp16 needs scaling.use_gpu: true (use fp32 or bf16 on CPU)")
        return self

    def run_dir(self) -> str:
        return f"{self.storage.path.rstrip('/')}/{self.name}"

    def resolved(self) -> dict[str, Any]:
        """The job as plain data with every default filled in, the method's included."""
        return self.model_dump(mode="json")


def load_job(path: str | Path) -> DistillJob:
    """Read and validate a job file; every problem is reported with its key, before any cluster work."""
    job = validate_file(path, DistillJob)
    try:
        check_paths(job)
        check_method(job)
        check_submitted(job)
    except JobError as err:
        raise JobError(f"{path}: {err}") from None
    return job


def check_submitted(job: DistillJob, upload: Path | None = None) -> None:
    """In a submitted Ray job, where the run's state must outlive the upload: Ray's per-upload folder changes
    with every edit and is deleted with the upload, so a relative local `storage.path` (and the default MLflow
    store beside s3:// storage, `runs/mlflow.db` in that folder) would restart the run from step 1 on the
    next submission. Refused here, before Ray is used (docs/cluster.md); `loopfree submit` applies the same
    rule before it uploads (`upload`: the folder it will upload)."""
    upload = upload or submitted_upload()
    if upload is None:
        return
    path = job.storage.path
    if not storage.is_s3(path) and not Path(path).is_absolute():
        raise JobError(f"storage.path: {path!r} is relative, and a submitted job runs in Ray's copy of the upload "
                       f"({upload}), which changes with every edit and is deleted with the upload: a resubmission "
                       "would not find its checkpoints. Use s3:// storage, or an absolute path every node shares")
    if (storage.is_s3(path) and job.tracking.enabled and not job.tracking.mlflow_uri
            and not os.environ.get("MLFLOW_TRACKING_URI")):
        raise JobError("tracking.mlflow_uri: not set, and MLFLOW_TRACKING_URI is not set for the job: the default "
                       f"store would be runs/mlflow.db inside Ray's copy of the upload ({upload}) and vanish with "
                       "it. Set either (or tracking.enabled: false)")


def _teacher_config(job: DistillJob, name: str) -> dict[str, Any] | None:
    """A local teacher's (or the preset's) unet/scheduler config; None for an s3:// teacher."""
    if job.model.preset:
        from loopfree.presets import preset

        return dict(getattr(preset(job.model.preset), name))
    file = Path(job.model.teacher_dir) / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
    return json.loads(file.read_text()) if file.is_file() else None


@functools.cache
def _unet_module_names(config_json: str) -> frozenset[str]:
    """Module names of a UNet with this config, built on the meta device (no weights, no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads(config_json))
    return frozenset(name for name, _ in unet.named_modules())


def check_method(job: DistillJob) -> None:
    """The Distiller's model-dependent checks, in the driver: the DDIM plan against the teacher's training
    timesteps (1000 where the teacher is on S3), the regression's pooling against its latent size, and each LoRA
    target against the teacher UNet's modules."""
    import torch

    from loopfree.schedule import plan_for

    cfg = job.method
    scheduler = _teacher_config(job, "scheduler") or {}
    alphas = torch.linspace(0.9991, 0.0047, int(scheduler.get("num_train_timesteps", 1000)))  # only its length matters
    try:
        plan_for(alphas, cfg.mode, cfg.num_steps, cfg.spacing, cfg.timesteps, int(scheduler.get("steps_offset", 1)))
    except ValueError as err:
        raise JobError(f"method.{'timesteps' if cfg.timesteps else 'num_steps'}: {err}") from None
    unet = _teacher_config(job, "unet")
    if unet is not None and int(unet.get("sample_size", 1)) % cfg.regression_pool:
        raise JobError(f"method.regression_pool: {cfg.regression_pool} must divide the latent's size "
                       f"{unet['sample_size']} (the teacher UNet's sample_size)")
    if cfg.fake_score == "lora" and unet is not None:
        names = _unet_module_names(json.dumps({k: v for k, v in unet.items() if not k.startswith("_")}, sort_keys=True))
        for target in cfg.lora_target_modules:
            if not any(n == target or n.endswith("." + target) for n in names):
                raise JobError(f"method.lora_target_modules: {target!r} names no module of the teacher's UNet "
                               "(attention projections are to_q, to_k, to_v, to_out.0)")


def check_paths(job: DistillJob) -> None:
    """Local model and data paths (relative to the working directory) must exist; s3:// ones are checked
    when the corpus and models are read, still in the driver before the trainer starts."""
    for key, value in (("model.teacher_dir", job.model.teacher_dir), ("model.student_dir", job.model.student_dir)):
        if value and not value.startswith("s3://") and not Path(value).is_dir():
            raise JobError(f"{key}: model directory {value!r} does not exist")
    if job.model.student_dir and not job.model.student_dir.startswith("s3://"):
        try:  # what the workers will load: refused here, before Ray starts
            student_unet_dir(job.model.student_dir)
        except ValueError as err:
            raise JobError(f"model.student_dir: {err}") from None
    for i, p in enumerate(job.data.paths):
        if not p.startswith("s3://") and not Path(p).exists():
            raise JobError(f"data.paths[{i}]: {p!r} does not exist")
    for key, value in job.evaluation.local_paths() if job.evaluation else []:
        if value and not Path(value).exists():
            raise JobError(f"{key}: {value!r} does not exist")


def deepspeed_config(job: DistillJob, grad_clip: float) -> dict[str, Any]:
    """The DeepSpeed JSON for one engine, derived from the job (micro batch = per-worker batch)."""
    ds = job.deepspeed
    return {
        "train_micro_batch_size_per_gpu": job.scaling.batch_per_worker,
        "gradient_accumulation_steps": 1,
        "train_batch_size": job.scaling.global_batch_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16, "loss_scale_window": 1000},
        "zero_allow_untested_optimizer": True,  # torch.optim.Adam as the client optimizer (docs/architecture.md)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
