"""Batch generation: a prompt file -> PNGs plus a manifest, with Ray Data and an actor pool of model replicas.

Layout under the output root (local or s3://):
    images/<id>.png             one image per prompt id
    manifest/part-<uuid>.jsonl  written by a replica after the images of its batch: the record of what is done
    manifest.jsonl              all rows in prompt-file order, rewritten at the end of every run

Exactly once: an image's path and seed depend only on its prompt id, a batch's part file is written
(atomically) after its images, and a re-run skips every id a part file names. A run killed mid-way
leaves at worst images without a part; the re-run regenerates those same images to the same paths.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import time
import uuid
from dataclasses import dataclass

import numpy as np

from loopfree.images import png_bytes
from loopfree.seeds import SEED_RANGE, is_seed
from loopfree_platform import storage
from loopfree_platform.serve.job import GenerateJob

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class GenerateError(ValueError):
    """Bad prompt records or an output root that belongs to another model; names the file and line."""


@dataclass
class GenerateResult:
    generated: int
    skipped: int
    total: int
    manifest: str
    model_version: str
    seconds: float


def _format(job: GenerateJob) -> str:
    if job.prompts.format != "auto":
        return job.prompts.format
    path = job.prompts.path.lower()
    return "tsv" if path.endswith(".tsv") else "jsonl" if path.endswith((".jsonl", ".json")) else "text"


def _raw_records(job: GenerateJob, text: str) -> list[tuple[int, dict]]:
    """(line number, fields) per non-empty record of the prompt file."""
    fmt, p = _format(job), job.prompts
    if fmt == "text":
        return [(n, {p.column: line.strip()}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if fmt == "tsv":
        reader = csv.DictReader(io.StringIO(text), delimiter="\t")
        if p.column not in (reader.fieldnames or []):
            raise GenerateError(f"{p.path}: no column {p.column!r} (prompts.column); columns are {reader.fieldnames}")
        return [(n, row) for n, row in enumerate(reader, 2)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise GenerateError(f"{p.path}:{n}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise GenerateError(f"{p.path}:{n}: a JSONL record must be an object")
        out.append((n, row))
    return out


def read_records(job: GenerateJob) -> list[dict]:
    """[{id, prompt, seed}] in file order; ids are unique, safe as file names; seeds default to seed + index."""
    p = job.prompts
    text = storage.read_bytes(p.path, job.output.endpoint_url).decode("utf-8")
    records, seen = [], set()
    for index, (n, row) in enumerate(_raw_records(job, text)[: p.limit]):
        prompt = row.get(p.column)
        if not isinstance(prompt, str) or not prompt.strip():
            raise GenerateError(f"{p.path}:{n}: {p.column!r} must be a non-empty string")
        pid = str(row[p.id_column]) if p.id_column and row.get(p.id_column) is not None else f"{index:06d}"
        if not SAFE_ID.match(pid) or ".." in pid:  # ids become file names under the output root
            raise GenerateError(f"{p.path}:{n}: id {pid!r} is not a safe file name ([A-Za-z0-9_.-], no '..')")
        if pid in seen:
            raise GenerateError(f"{p.path}:{n}: duplicate id {pid!r}")
        seen.add(pid)
        seed = row.get("seed", job.generation.seed + index)
        if not is_seed(seed):
            raise GenerateError(f"{p.path}:{n}: seed must be an integer in {SEED_RANGE}, got {seed!r}")
        records.append({"id": pid, "prompt": prompt.strip(), "seed": seed})
    if not records:
        raise GenerateError(f"{p.path}: no prompts")
    return records


def manifest_rows(root: str, endpoint_url: str | None) -> dict[str, dict]:
    """Manifest rows of every finished batch, by prompt id."""
    parts = storage.join(root, "manifest")
    if not storage.exists(parts, endpoint_url):
        return {}
    rows = {}
    for uri in storage.list_files(parts, endpoint_url):
        for line in storage.read_bytes(uri, endpoint_url).decode().splitlines():
            row = json.loads(line)
            rows[row["id"]] = row
    return rows


def done_rows(root: str, endpoint_url: str | None) -> dict[str, dict]:
    """Manifest rows whose image file still exists, by prompt id (a deleted PNG is generated again)."""
    images = storage.join(root, "images")
    present = {posixpath.basename(f) for f in storage.list_files(images, endpoint_url)} \
        if storage.exists(images, endpoint_url) else set()
    return {i: r for i, r in manifest_rows(root, endpoint_url).items()
            if posixpath.basename(r.get("path", "")) in present}


def is_done(record: dict, done: dict[str, dict]) -> bool:
    """Done: an image exists for this id, made from the same prompt and seed (an edited record is redone)."""
    row = done.get(record["id"])
    return row is not None and row["prompt"] == record["prompt"] and row["seed"] == record["seed"]


class GeneratorReplica:
    """A Ray Data actor holding one pipeline: a batch of records in, PNGs and a manifest part out."""

    def __init__(self, model: dict, root: str, endpoint_url: str | None):
        from loopfree_platform.models import load_pipeline, resolve

        resolved = resolve(model["source"], model.get("tracking_uri"), model.get("endpoint_url"))
        self.pipe = load_pipeline(resolved, model["device"], model["dtype"])
        self.model = {"model": resolved.name, "model_version": resolved.version}
        self.root, self.endpoint_url = root, endpoint_url

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        ids, prompts, seeds = list(batch["id"]), list(batch["prompt"]), [int(s) for s in batch["seed"]]
        images = self.pipe(prompts, seeds=seeds, batch_size=len(ids), output_type="np").images
        rows = []
        for pid, prompt, seed, image in zip(ids, prompts, seeds, images):
            path = storage.join("images", f"{pid}.png")
            storage.write_bytes(storage.join(self.root, path), png_bytes(image), self.endpoint_url)
            rows.append({"id": pid, "prompt": prompt, "seed": seed, "path": path, **self.model})
        part = storage.join(self.root, "manifest", f"part-{uuid.uuid4().hex}.jsonl")
        storage.write_bytes(part, "".join(json.dumps(r) + "\n" for r in rows).encode(), self.endpoint_url)
        return {"id": ids}


def _check_model(rows: dict[str, dict], version: str, root: str) -> None:
    others = sorted({r["model_version"] for r in rows.values()} - {version})
    if others:
        raise GenerateError(f"output.root {root} already holds images of model version(s) {others}, "
                            f"not {version}: use a new output root for another model")


def run_generate(job: GenerateJob, address: str | None = None) -> GenerateResult:
    import ray

    from loopfree_platform.console import active, task
    from loopfree_platform.models import absolute_source, resolve
    from loopfree_platform.runtime import ensure_ray

    start = time.perf_counter()
    root, endpoint = job.output.root, job.output.endpoint_url
    records = read_records(job)
    model = {**job.model.model_dump(mode="json"), "source": absolute_source(job.model.source)}
    version = resolve(model["source"], model["tracking_uri"], model["endpoint_url"]).version
    _check_model(manifest_rows(root, endpoint), version, root)  # any earlier image, kept or deleted
    done = done_rows(root, endpoint)
    todo = [r for r in records if not is_done(r, done)]
    print(f"{len(records)} prompts: {len(records) - len(todo)} already done, {len(todo)} to generate", flush=True)
    if todo:
        active().phase("starting Ray")
        ensure_ray(address)
        g = job.generation
        ds = ray.data.from_items(todo).map_batches(
            GeneratorReplica, fn_constructor_kwargs={"model": model, "root": root, "endpoint_url": endpoint},
            batch_size=g.batch_size, compute=ray.data.ActorPoolStrategy(size=g.replicas),
            num_cpus=g.num_cpus, num_gpus=g.num_gpus or None)
        with task(len(todo), "generate", unit="img") as bar:  # the command's bar, or one of its own
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(len(batch["id"]))
    rows = done_rows(root, endpoint)
    order = {r["id"]: i for i, r in enumerate(records)}
    lines = sorted(rows.values(), key=lambda r: (order.get(r["id"], len(order)), r["id"]))
    manifest = storage.join(root, "manifest.jsonl")
    storage.write_bytes(manifest, "".join(json.dumps(r) + "\n" for r in lines).encode(), endpoint)
    return GenerateResult(len(todo), len(records) - len(todo), len(rows), manifest, version, time.perf_counter() - start)
