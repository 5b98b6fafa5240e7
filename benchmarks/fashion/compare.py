"""The Fashion-MNIST comparison (teacher, SwiftBrush and TiUE students), with the platform's own jobs: distil three students from
models/fashion-teacher through the Ray Train path (same budget each), evaluate six systems with the
evaluation job, time them with benchmarks/latency_memory.py, write benchmarks/results/fashion.md.

    python -m benchmarks.fashion.compare                      # everything (about 40 min on 2 shared cores)
    python -m benchmarks.fashion.compare --steps 5 --images 50 --reference 50 --work runs/fashion-compare-dry

Resumable: a student whose export exists is not trained again (its recorded wall time is kept), a system
whose evaluation result is saved is not evaluated again, and the evaluation job caches the reference
statistics. Delete the --work folder to start over.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml
from loopfree_platform.distill.job import DistillJob, check_paths

QUICKSTART = Path("jobs/quickstart.yaml")
COMMAND = ".venv/bin/python -m benchmarks.fashion.compare"
TEACHER = "models/fashion-teacher"
# Student name -> DistillConfig overrides of the quickstart's method section. Same optimiser, batch,
# steps and LoRA teacher for all three; only the generator's plan and the KL weight differ.
STUDENTS: dict[str, dict[str, Any]] = {
    # SwiftBrush: one UNet pass at t = 999; there is no eps_all over K steps, so no KL term.
    "swiftbrush-1step": {"mode": "one_step", "num_steps": 1, "lambda_kl": 0.0},
    "tiue-k4-kl": {"mode": "tiue", "num_steps": 4, "lambda_kl": 0.1},
    "tiue-k4-nokl": {"mode": "tiue", "num_steps": 4, "lambda_kl": 0.0},  # the paper's ablation
}


def student_job(name: str, work: Path, steps: int) -> DistillJob:
    """The quickstart job with this student's method, its own run folder and `steps` training steps."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw = copy.deepcopy(raw)
    raw["name"] = f"fashion-{name}"
    raw["method"].update(STUDENTS[name])
    raw["storage"]["path"] = str(work / "distill")
    rows_per_epoch = sum(1 for line in Path(raw["data"]["paths"][0]).read_text().splitlines() if line.strip())
    # Enough (prompt, epoch) rows that max_steps, not the corpus, ends the run.
    raw["data"]["epochs"] = math.ceil(steps * raw["scaling"]["global_batch_size"] / max(rows_per_epoch, 1)) + 1
    raw["training"]["max_steps"] = steps
    raw["checkpoint"]["every_steps"] = min(raw["checkpoint"]["every_steps"], steps)
    raw["sampling"]["every_steps"] = steps  # one sample grid at the end: sampling is not part of the budget
    # Tracked in MLflow like any job, but not registered: the quickstart owns the registry's alias.
    raw["tracking"] = {"registered_model": None}
    job = DistillJob.model_validate(raw)
    check_paths(job)
    return job


def export_dir(job: DistillJob) -> Path:
    return Path(job.run_dir()) / "export"


def distill_students(work: Path, steps: int) -> dict[str, dict[str, Any]]:
    """Train each student unless its export exists; returns name -> {export, wall_s, steps}."""
    from loopfree_platform.distill.driver import run_distill
    from loopfree_platform.runtime import ensure_ray

    ensure_ray()  # started before the clocks: the Ray start is not part of any student's training time
    record = work / "students.json"
    done: dict[str, dict[str, Any]] = json.loads(record.read_text()) if record.is_file() else {}
    for name in STUDENTS:
        job = student_job(name, work, steps)
        if name in done and (export_dir(job) / "model_index.json").is_file():
            print(f"{name}: export exists, trained in {done[name]['wall_s']:.0f} s; skipped", flush=True)
            continue
        start = time.perf_counter()
        result = run_distill(job)
        wall = time.perf_counter() - start
        done[name] = {"export": str(export_dir(job)), "wall_s": round(wall, 1), "steps": result.steps,
                      "final_metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(done, indent=2))
        print(f"{name}: {result.steps} steps in {wall:.0f} s -> {export_dir(job)}", flush=True)
    return done



# -- evaluation ------------------------------------------------------------------------------------
def eval_prompts(work: Path, n: int) -> Path:
    """n captions, class i % 10 for prompt i and the templates in turn: every class n / 10 times."""
    from examples.fashion.data import CLASSES, TEMPLATES, caption

    path = work / f"prompts-{n}.txt"
    lines = [caption(i % len(CLASSES), (i // len(CLASSES)) % len(TEMPLATES)) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def reference_folder(work: Path, n: int) -> Path:
    """The first n Fashion-MNIST test images as PNGs in the teacher's framing (28x28 zero-padded to 32x32,
    RGB), so generated and real images differ in content, not in layout."""
    import PIL.Image

    from examples.fashion.data import load_split, to_model_images

    folder = work / f"reference-test-{n}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images = ((to_model_images(load_split("test", n)[0]) + 1) * 127.5).round().clamp(0, 255).byte()
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
        PIL.Image.fromarray(im).save(folder / f"{i:05d}.png")
    return folder


def teacher_name(steps: int, guidance: float) -> str:
    return f"teacher {steps} step{'s' if steps > 1 else ''} cfg {guidance:g}"


def systems(students: dict[str, dict[str, Any]], guidance: float) -> list[dict[str, Any]]:
    """The six rows of the table, as evaluation-job system sections."""
    teacher = [{"name": teacher_name(n, guidance), "kind": "teacher", "model_dir": TEACHER,
                "num_inference_steps": n, "guidance_scale": guidance} for n in (50, 4, 1)]
    labels = {"swiftbrush-1step": "SwiftBrush student (1 step)", "tiue-k4-kl": "TiUE student (K=4, KL)",
              "tiue-k4-nokl": "TiUE student (K=4, no KL)"}
    return teacher + [{"name": labels[k], "kind": "tiue", "model_dir": v["export"]} for k, v in students.items()]


def eval_job(system: dict[str, Any], prompts: Path, reference: Path, work: Path):
    """A one-system evaluation job (one job per row, so a crash loses at most one row)."""
    from loopfree_platform.evaluate.job import EvaluateJob
    from loopfree_platform.evaluate.stages import _slug

    return EvaluateJob.model_validate({
        "name": f"fashion-{_slug(system['name'])}", "systems": [system],
        "prompts": {"path": str(prompts), "format": "text"},
        "reference": {"images": str(reference)},
        "metrics": {"prdc": True, "nearest_k": 5, "inception_batch_size": 16},
        # Two 1-thread Inception actors are fastest on the busy 2-core machine (benchmarks/results/inception.md).
        "scaling": {"generation_workers": 1, "feature_workers": 2, "batch_size": 50, "cpus_per_worker": 1},
        "output": {"dir": str(work / "eval"), "save_images": True, "cache_dir": "runs/eval-cache"},
        "seed": 0})


def evaluate_all(rows: list[dict[str, Any]], prompts: Path, reference: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Run the evaluation job for each system not yet evaluated; name -> metrics and image folder."""
    from loopfree_platform.evaluate.driver import run_evaluate
    from loopfree_platform.evaluate.stages import _slug

    out: dict[str, dict[str, Any]] = {}
    for system in rows:
        job = eval_job(system, prompts, reference, work)
        saved = job.out_dir() / "result.json"
        if saved.is_file():
            out[system["name"]] = json.loads(saved.read_text())
            print(f"{system['name']}: evaluated before; reused {saved}", flush=True)
            continue
        start = time.perf_counter()
        (result,), _, _ = run_evaluate(job)
        out[system["name"]] = {"steps": result.steps, "images": result.images, "fid": result.fid, **result.prdc,
                               "image_dir": str(job.out_dir() / "images" / _slug(system["name"])),
                               "eval_wall_s": round(time.perf_counter() - start, 1)}
        saved.write_text(json.dumps(out[system["name"]], indent=2))
        print(f"{system['name']}: FID {result.fid:.2f} {result.prdc}", flush=True)
    return out



def timings(rows: list[dict[str, Any]], prompts: Path, reference: Path, work: Path,
            repeats: int) -> dict[str, tuple[float, float]]:
    """benchmarks/latency_memory.py over the six systems in one process, one after another (reused when
    its report already covers every row)."""
    from benchmarks.fashion.compare_report import latency, parse_latency

    out = work / "latency.md"
    if out.is_file() and all(f"| {r['name']} |" in out.read_text() for r in rows):
        return parse_latency(out)
    job = eval_job(rows[0], prompts, reference, work).model_dump(mode="json")
    job.update(name="fashion-latency", systems=rows)
    job_yaml = work / "latency_job.yaml"
    job_yaml.write_text(yaml.safe_dump(job, sort_keys=False))
    return latency(job_yaml, out, repeats)


def grids(results: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """One grid per system of the same 20 prompts and seeds (ids 0-19: every class twice, in class order)."""
    from loopfree_platform.evaluate.stages import _slug

    from benchmarks.fashion.compare_report import grid

    return {name: grid(Path(r["image_dir"]), list(range(min(20, r["images"]))), 10, out_dir / f"{_slug(name)}.png")
            for name, r in results.items()}


def training_row(name: str, student: dict[str, Any]) -> str:
    """One row of the training-time table, from the job's recorded wall time and its metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(student["export"]).parent / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    step = sum(r["step_time_s"] for r in rows) / max(len(rows), 1)
    last = rows[-1] if rows else {}
    losses = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss_vsd", "loss_kl", "loss_fake_score") if k in last)
    return (f"| {name} | {student['steps']} | {student['wall_s']:.0f} | {last.get('worker_startup_s', 0):.0f} "
            f"| {step:.3f} | {losses} |")


def write_report(args: argparse.Namespace, students: dict, results: dict, grid_paths: dict[str, Path]) -> Path:
    from benchmarks.fashion.compare_report import READING, kept_reading, table, targets

    out = args.out
    verdicts = targets(results, "TiUE student (K=4, KL)", "SwiftBrush student (1 step)",
                       teacher_name(50, args.guidance), teacher_name(4, args.guidance))
    train = [training_row(k, v) for k, v in students.items()]
    lines = [
        "# Fashion-MNIST: teacher, SwiftBrush and TiUE students", "",
        f"Regenerate everything (about 45 min on the 2 shared cores): `{COMMAND}`", "",
        f"Teacher: `{TEACHER}` (its README). Each student: `jobs/quickstart.yaml` with its method, "
        f"{args.steps} steps, global batch 8, 2 Ray Train workers (DeepSpeed ZeRO-2, fp32), through "
        "`loopfree_platform.distill.driver.run_distill`. Evaluation: "
        "`loopfree_platform.evaluate.driver.run_evaluate`, one job per "
        f"system, {args.images} prompts (class i % 10 for prompt i, the 8 caption templates in turn; "
        f"`{args.work}/prompts-{args.images}.txt`), image i with seed i for every system, against the first "
        f"{args.reference} Fashion-MNIST test images padded to 32x32 like the training images. FID on Inception "
        "pool features; precision/recall/F1/density/coverage with k = 5; alignment = accuracy of "
        "`models/fashion-classifier` (90.3% on the real test set) on the generated images against the prompt's "
        "class; time and memory: `benchmarks/latency_memory.py` (batch 1, median of "
        f"{args.repeats} runs, CPU peak resident set of the process, weights included), all rows in one process.", "",
        *table(results), "", "## Training wall time (same budget for each student)", "",
        "| student | steps | wall s | of which worker start s | mean step s | last logged losses |", "|---|---|---|---|---|---|",
        *train, "",
        "Wall time of `run_distill` after the Ray instance is up: corpus preparation, worker start, training, "
        "checkpoints, final sample grid and export. The first job of a fresh Ray instance also pays for the "
        "workers' first imports (torch, DeepSpeed), so its worker start is much longer than the others'; "
        "the mean step time (`step_time_s` of the job's metrics.jsonl) is the like-for-like training cost.", "",
        "## Sample grids (same 20 prompts and seeds)", "",
        "Columns: t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot (two rows).", "",
        *[f"- {name}: ![{name}]({p.relative_to(out.parent)})" for name, p in grid_paths.items()], "",
        "## Targets", "", *verdicts, "", "## Reading", "", READING, "", kept_reading(out), ""]
    out.write_text("\n".join(lines))
    return out


def run(args: argparse.Namespace) -> None:
    from benchmarks.fashion.compare_report import alignment, save_json

    students = distill_students(args.work, args.steps)
    if args.stage == "distill":
        return
    prompts, reference = eval_prompts(args.work, args.images), reference_folder(args.work, args.reference)
    rows = systems(students, args.guidance)
    results = evaluate_all(rows, prompts, reference, args.work)
    texts = prompts.read_text().splitlines()
    for r in results.values():
        r["alignment"] = alignment(Path(r["image_dir"]), texts)
    for name, (ms, gb) in timings(rows, prompts, reference, args.work, args.repeats).items():
        if name in results:
            results[name].update(time_ms=ms, memory_gb=gb)
    save_json(args.work / "results.json", {"students": students, "systems": results})
    report = write_report(args, students, results, grids(results, args.out.parent / args.out.stem))
    print(f"report: {report}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/fashion-compare"))
    p.add_argument("--steps", type=int, default=300, help="training steps of every student")
    p.add_argument("--images", type=int, default=1000, help="generated images per system")
    p.add_argument("--reference", type=int, default=1000, help="Fashion-MNIST test images")
    p.add_argument("--guidance", type=float, default=4.5, help="CFG scale of the teacher rows (the teacher's card)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per system (latency_memory.py; noisy machine)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fashion.md"))
    p.add_argument("--stage", choices=["all", "distill"], default="all")
    run(p.parse_args())


if __name__ == "__main__":
    main()
