"""The distillation study on the Fashion-MNIST teacher: recipes x seeds, FID curves on a
VALIDATION reference drawn from the training images (never the test images of the final table).

Each run is one process with one thread running the library's training step (`loopfree.training.
train_iteration`, the loop body every platform worker runs) and evaluating the EMA student every
`--eval-every` steps with `loopfree.evaluation` (the code the platform's in-training evaluation uses):
    .venv/bin/python -m benchmarks.fashion.study --recipe paper --seed 0 --steps 1500
    .venv/bin/python -m benchmarks.fashion.study --report            # table + FID-over-steps PNG
Resumable per run: a run whose curve reaches --steps is skipped; a run stopped midway goes on from its last
evaluation (benchmarks/fashion/study_checkpoint.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

from benchmarks.fashion import study_checkpoint
from benchmarks.fashion.study_recipes import BASE, BATCH_SIZES, RECIPES, STARTS

WORK = Path("runs/fashion-study")  # caches and exports (large, not committed)
# Each run's record (validation curve, final test row) is a result: small, committed, and what --report reads.
RECORDS = Path("benchmarks/results/fashion_study_runs")
TEACHER = Path("models/fashion-teacher")
CLASSIFIER = Path("models/fashion-classifier")


def validation_reference(inception) -> torch.Tensor:
    """Inception features of the shipped validation split (1000 Fashion-MNIST TRAINING images, drawn with seed 0:
    data/fashion-mnist/README.md) in the teacher's framing, cached. Every choice of the study is made on it."""
    from examples.fashion.data import load_validation, to_model_images
    from loopfree.features import to_uint8

    cache = WORK / "reference-train-1000-seed0.pt"  # the same images the study drew from the full split before
    if cache.is_file():
        return torch.load(cache)
    model_images = to_model_images(load_validation())  # (1000, 3, 32, 32) in [-1, 1]
    feats = torch.cat([inception(to_uint8((b + 1) / 2)) for b in model_images.split(50)])
    _save(feats, cache)
    return feats


def test_reference(inception) -> torch.Tensor:
    """The final table's reference: the first 1000 Fashion-MNIST TEST images in the teacher's framing, as in
    benchmarks/results/fashion.md (compare.reference_folder), so the teacher rows there stay comparable."""
    from examples.fashion.data import SHIPPED, load_split, to_model_images
    from loopfree.features import to_uint8

    cache = WORK / "reference-test-first1000.pt"
    if cache.is_file():
        return torch.load(cache)
    model_images = to_model_images(load_split("test", 1000, data_dir=SHIPPED)[0])
    feats = torch.cat([inception(to_uint8((b + 1) / 2)) for b in model_images.split(50)])
    _save(feats, cache)
    return feats


def _save(feats: torch.Tensor, cache: Path) -> None:
    """Write then rename: two study runs started together may fill the same cache."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{random.getrandbits(32):08x}.tmp")
    torch.save(feats, tmp)
    tmp.replace(cache)


def test_set(n: int):
    """fashion.md's protocol: prompt i names class i % 10 with template (i // 10) % 8, seed i."""
    from examples.fashion.data import CLASSES, TEMPLATES, caption
    from loopfree.evaluation import EvalSet

    prompts = tuple(caption(i % len(CLASSES), (i // len(CLASSES)) % len(TEMPLATES)) for i in range(n))
    return EvalSet(prompts, tuple(range(n)))


def validation_set(images: int, seed: int = 10_000):
    """The validation protocol: the 80 captions in class-major order (caption i names class i % 10 with template
    (i // 10) % 8), cycled to `images` prompts with seeds from `seed` on."""
    from examples.fashion.data import all_captions
    from loopfree.evaluation import EvalSet

    captions = all_captions()
    return EvalSet.cycle([captions[(i % 10) * 8 + (i // 10) % 8] for i in range(80)], images, seed=seed)


def batches(tokenize, prompts: list[str], batch_size: int, seed: int):
    """Endless batches over the captions, reshuffled every epoch with (seed, epoch)."""
    epoch = 0
    while True:
        order = list(range(len(prompts)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield {"input_ids": tokenize([prompts[i] for i in order[s:s + batch_size]])}
        epoch += 1


STANDARD_STEPS = 600  # the study's run length; runs of another length carry it in their name


def run_name(recipe: str, seed: int, steps: int) -> str:
    return f"{recipe}-s{seed}" if steps in (0, STANDARD_STEPS) else f"{recipe}@{steps}-s{seed}"


def study_pairs(config, components):
    """The regression recipes' teacher pairs (`regression_pairs` of them): caption i % 80 with pair seed i, the
    teacher's DDIM sample at the pairs' steps and guidance, or with `regression_finish_from` the initial student's
    sample finished by the teacher (`loopfree.pairs`); cached and shared by every run that asks."""
    from examples.fashion.data import all_captions
    from loopfree.pairs import PAIR_SEED_OFFSET, TeacherPairs, make_refined_pairs, make_teacher_pairs, pair_seeds
    from loopfree.pipeline import TiUEPipeline

    count, t = config.regression_pairs, config.regression_finish_from
    steps, cfg = config.regression_teacher_steps, config.pair_cfg
    refine = '' if t is None else f"refine{t}-{'' if config.regression_renoise == 'mirrored_z' else 'fresh-'}"
    # named by the first pair seed too: caches made before the pair seeds moved below 2**32 hold other noise
    cache = WORK / f"pairs-{count}-{refine}{steps}steps-g{cfg:g}-seed{PAIR_SEED_OFFSET}.safetensors"
    if cache.is_file():
        return TeacherPairs.load(cache)
    captions = all_captions()
    pipe = TiUEPipeline.from_components(components)  # the teacher's UNet: also the initial student (K = 4, leading)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    prompts, seeds = [captions[i % len(captions)] for i in range(count)], pair_seeds(0, count)
    if t is None:
        pairs = make_teacher_pairs(pipe, prompts, seeds, steps, cfg)
    else:
        pairs = make_refined_pairs(pipe, pipe, prompts, seeds, t, steps, cfg, renoise=config.regression_renoise)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")  # two runs started together may both make them
    pairs.save(partial)
    partial.replace(cache)
    print(f"{count} teacher pairs in {time.perf_counter() - t0:.0f} s -> {cache}", flush=True)
    return pairs


def pair_record(config) -> dict:
    """What a run's record says of its regression pairs: their first seed. Runs recorded without it made their pairs
    from seeds 2**40 + i, whose noise is test seed i's (torch's CPU generator keeps a seed's low 32 bits)."""
    from loopfree.pairs import PAIR_SEED_OFFSET

    return {"first_pair_seed": PAIR_SEED_OFFSET} if config.regression_weight > 0 else {}


def study_real_latents(components) -> torch.Tensor:
    """The GAN recipes' real images: the shipped GAN subset (2000 training images outside the validation draw) in
    the teacher's framing, encoded once with the teacher's VAE and scaled like its latents (`loopfree.gan`)."""
    from examples.fashion.data import load_gan_images, to_model_images
    from loopfree.gan import encode_real_images

    return encode_real_images(components.vae, to_model_images(load_gan_images()))  # (2000, 4, 8, 8)


def uses_training_images(config, init_from: str | None) -> bool:
    """Whether a run's student saw real training images: its recipe's GAN term, or the run it starts from."""
    if config.uses_real_images:
        return True
    return bool(init_from) and json.loads((WORK / init_from / "run.json").read_text()).get("uses_training_images", False)


def student_init(init_from: str | None):
    """The student UNet of a K-transfer run: the EMA student exported by a finished run (None: the teacher's)."""
    from loopfree.presets import load_student_unet  # what a job's model.student_dir loads

    return None if init_from is None else load_student_unet(WORK / init_from / "export")


def plan_tag(config) -> str:
    """"" for the study's base plan (leading, K = 4) and the 1-step mode at t = 999; else the plan, e.g.
    "-trailing-k4" or "-t751" (1-step at 751): the initial student's evaluation depends on its timesteps, so only
    runs with the same plan share it."""
    if config.mode != "tiue":
        return f"-t{config.timesteps[0]}" if config.timesteps and config.timesteps[0] != 999 else ""
    if (config.spacing, config.num_steps) == ("leading", 4):
        return ""
    where = "t" + "-".join(map(str, config.timesteps)) if config.spacing == "custom" else config.spacing
    return f"-{where}-k{config.num_steps}"


def transfer_label(recipe: str, init_from: str, num_steps: int) -> str:
    """`k<K>ft-<source group>`, plus `-with-<recipe>` when the fine-tune's recipe is not its source's."""
    source = init_from.rsplit("-s", 1)[0]
    label = f"k{num_steps}ft-{source}"
    return label if recipe == source.split("@")[0] else f"{label}-with-{recipe}"


def run(recipe: str, seed: int, steps: int, eval_every: int, images: int, batch_size: int, test_images: int,
        init_from: str | None = None, num_steps: int | None = None, export_at: tuple[int, ...] = ()) -> Path:
    from examples.fashion.data import all_captions
    from loopfree.classifier import load_classifier
    from loopfree.config import DistillConfig
    from loopfree.distiller import Distiller
    from loopfree.evaluation import generate_features, metrics
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components
    from loopfree.rng import IterationRNG
    from loopfree.training import local_engines, train_iteration

    label = recipe if num_steps is None else transfer_label(recipe, init_from, num_steps)
    init_from = init_from or (f"{STARTS[recipe]}-s{seed}" if recipe in STARTS else None)
    name = run_name(label, seed, steps)
    out = WORK / name
    curve = RECORDS / f"{name}.jsonl"
    rows = [json.loads(x) for x in curve.read_text().splitlines()] if curve.is_file() else []
    if rows and rows[-1]["step"] >= steps and not (out / study_checkpoint.NAME).is_file():
        return curve  # finished (a checkpoint at the last update: stopped before its export, which resuming makes)
    out.mkdir(parents=True, exist_ok=True)
    RECORDS.mkdir(parents=True, exist_ok=True)
    checkpoint = out / study_checkpoint.NAME
    state = study_checkpoint.load(checkpoint)
    start = study_checkpoint.resume_step(rows, state)  # 0: a partial run without a usable checkpoint starts over
    curve.write_text("".join(json.dumps(row) + "\n" for row in rows if row["step"] <= start) if start else "")
    torch.manual_seed(seed)
    components = load_components(TEACHER)
    config = DistillConfig(**{**BASE, **RECIPES[recipe], **({"num_steps": num_steps} if num_steps else {})})
    pairs = study_pairs(config, components) if config.regression_weight > 0 else None
    real = study_real_latents(components) if config.uses_real_images else None
    distiller = Distiller(components, config, student_unet=student_init(init_from))
    if pairs is not None:
        distiller.set_teacher_pairs(pairs)
    if real is not None:
        distiller.set_real_images(real)
    engines = local_engines(distiller)
    inception = InceptionFeatures(batch_size=50)
    ref = validation_reference(inception)
    classifier, classes = load_classifier(CLASSIFIER)
    captions = all_captions()
    eval_set = validation_set(images)
    data = batches(distiller.tokenize, captions, batch_size, seed)
    for _ in range(start):
        next(data)  # the batches the checkpoint's updates trained on

    def evaluate(step: int, train_s: float) -> None:
        pipe = TiUEPipeline.from_distiller(distiller, components)
        t0 = time.perf_counter()
        gen = generate_features(pipe, eval_set, range(images), inception, classifier, classes)
        row = {"step": step, **metrics(gen, ref), "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t0, 1)}
        with curve.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name} step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "step"), flush=True)

    train_s = study_checkpoint.restore(state, distiller, engines) if start else 0.0
    initial = WORK / f"initial-{config.mode}{plan_tag(config)}-{images}.json"  # shared by the recipes of one plan
    if start:
        print(f"{name}: resumed from update {start}", flush=True)
    elif init_from is not None:
        evaluate(0, train_s)
    elif initial.is_file():
        with curve.open("a") as f:
            f.write(initial.read_text().strip() + "\n")
    else:
        evaluate(0, train_s)
        initial.write_text(curve.read_text().splitlines()[0])
    for step in range(start, steps):
        t0 = time.perf_counter()
        batch = next(data)
        train_iteration(distiller, *engines, batch, IterationRNG(seed, step, 0, batch_size), step)
        train_s += time.perf_counter() - t0
        if (step + 1) % 50 == 0:
            print(f"{name} step {step + 1}/{steps}: {train_s / (step + 1):.2f} s/step", flush=True)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1, train_s)
            study_checkpoint.save(checkpoint, step + 1, train_s, distiller, engines)
        if step + 1 in export_at and step + 1 < steps:
            # the EMA student midway, for diagnostics on a shorter run's student: the same training as a run of that
            # length, though not bit for bit across sessions (docs/method.md); its validation row shows how close
            TiUEPipeline.from_distiller(distiller, components).save_pretrained(out / f"export@{step + 1}",
                                                                               safe_serialization=True)
    pipe = TiUEPipeline.from_distiller(distiller, components)
    pipe.save_pretrained(out / "export", safe_serialization=True)  # the EMA student: scored on test later, or not
    (out / "run.json").write_text(json.dumps({"recipe": label, "seed": seed, "steps": steps, "init_from": init_from,
                                              "batch_size": batch_size, "num_steps": config.num_steps, "mode": config.mode,
                                              "uses_training_images": uses_training_images(config, init_from),
                                              **pair_record(config)}))
    checkpoint.unlink(missing_ok=True)  # the export and the record keep a finished run (--steps 0 saved none)
    if test_images:
        score_test(name, test_images)
    return curve


def test_metrics(export: Path | str, test_images: int) -> dict:
    """An exported TiUE pipeline on the TEST protocol: `test_images` images against the first 1000 test images."""
    from loopfree.classifier import load_classifier
    from loopfree.evaluation import generate_features, metrics
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline

    pipe = TiUEPipeline.from_pretrained(export)
    pipe.set_progress_bar_config(disable=True)
    inception, (classifier, classes) = InceptionFeatures(batch_size=50), load_classifier(CLASSIFIER)
    gen = generate_features(pipe, test_set(test_images), range(test_images), inception, classifier, classes)
    return {"images": test_images, **metrics(gen, test_reference(inception))}


def score_test(name: str, test_images: int) -> Path:
    """The final row of a finished run: its exported EMA student on the TEST protocol. Called once per run, after
    the recipe and run length were chosen on the validation curves."""
    test_json = RECORDS / f"{name}.test.json"
    if test_json.is_file():
        raise SystemExit(f"{test_json} exists: the test split is scored once per run")
    info = json.loads((WORK / name / "run.json").read_text())
    # Runs finished before the key existed trained without real images (docs/method.md: only the GAN term uses them).
    info.setdefault("uses_training_images", False)
    result = {**info, **test_metrics(WORK / name / "export", test_images)}
    test_json.write_text(json.dumps(result, indent=1))
    print(f"{name} TEST: " + json.dumps(result), flush=True)
    return test_json


def score_export(export: str, test_images: int) -> dict:
    """Any exported TiUE pipeline (the quickstart's, say) on the TEST protocol, printed, not recorded: the report's
    rows come from study runs only. Scored once, after its job file was fixed."""
    result = {"export": export, **test_metrics(export, test_images)}
    print(f"{export} TEST: " + json.dumps(result), flush=True)
    return result


class TeacherSampler:
    """The teacher's multi-step DDIM sampler with CFG, called like a TiUE pipeline (what generate_features needs)."""

    def __init__(self, pipe, steps: int, guidance: float):
        self.pipe, self.steps, self.guidance = pipe, steps, guidance

    def __call__(self, prompts, seeds, batch_size, output_type):
        return self.pipe.sample_multistep(prompts, num_inference_steps=self.steps, guidance_scale=self.guidance,
                                          seeds=seeds, batch_size=batch_size, output_type=output_type)


def teacher_row(steps: int, guidance: float, images: int, test_images: int) -> Path:
    """The teacher's own rows: its `steps`-step sampler at `guidance` on the validation protocol (the images the
    students are evaluated on during training) and on the test protocol, recorded like a run."""
    from loopfree.classifier import load_classifier
    from loopfree.evaluation import generate_features, metrics
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components

    name = f"teacher{steps}-g{guidance:g}-s0"
    curve, test_json = RECORDS / f"{name}.jsonl", RECORDS / f"{name}.test.json"
    if test_json.is_file():
        return curve
    pipe = TiUEPipeline.from_components(load_components(TEACHER))
    pipe.set_progress_bar_config(disable=True)
    sampler, inception = TeacherSampler(pipe, steps, guidance), InceptionFeatures(batch_size=50)
    classifier, classes = load_classifier(CLASSIFIER)
    gen = generate_features(sampler, validation_set(images), range(images), inception, classifier, classes)
    RECORDS.mkdir(parents=True, exist_ok=True)
    curve.write_text(json.dumps({"step": 0, **metrics(gen, validation_reference(inception))}) + "\n")
    gen = generate_features(sampler, test_set(test_images), range(test_images), inception, classifier, classes)
    result = {"recipe": f"teacher{steps}-g{guidance:g}", "seed": 0, "steps": 0, "images": test_images,
              "teacher_steps": steps, "guidance_scale": guidance, **metrics(gen, test_reference(inception))}
    test_json.write_text(json.dumps(result, indent=1))
    print(f"{name}: validation " + curve.read_text().strip() + " TEST " + json.dumps(result), flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--images", type=int, default=400, help="generated images per evaluation")
    parser.add_argument("--batch-size", type=int, help="global batch (default 8; a recipe in BATCH_SIZES sets its own)")
    parser.add_argument("--test-images", type=int, default=0, help="at the end: export, and this many images vs the test set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export-at", type=int, nargs="*", default=[], metavar="UPDATE",
                        help="also export the EMA student after these updates (RUN/export@UPDATE; diagnostics only)")
    parser.add_argument("--init-from", help="K transfer: start the student from this finished run's export")
    parser.add_argument("--num-steps", type=int, help="K transfer: the new student's K (with --init-from)")
    parser.add_argument("--score-test", metavar="RUN", help="score a finished run's export on the test split (once)")
    parser.add_argument("--score-export", metavar="DIR", help="score an exported pipeline on the test split (printed)")
    parser.add_argument("--teacher-steps", type=int, help="score the teacher's sampler with this many steps instead")
    parser.add_argument("--guidance", type=float, default=2.0, help="the teacher's CFG (with --teacher-steps)")
    parser.add_argument("--report", action="store_true", help="write benchmarks/results/fashion_study.md and the PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.report:
        from benchmarks.fashion.study_report import write_report

        print(write_report(RECORDS, RECIPES))
        return
    if args.score_test:
        score_test(args.score_test, args.test_images or 1000)
        return
    if args.score_export:
        score_export(args.score_export, args.test_images or 1000)
        return
    if args.teacher_steps:
        teacher_row(args.teacher_steps, args.guidance, args.images, args.test_images)
        return
    if not args.recipe:
        parser.error("--recipe is required (or --report, or --teacher-steps)")
    if (args.init_from is None) != (args.num_steps is None):
        parser.error("--init-from and --num-steps go together")
    if args.init_from and args.recipe in STARTS:
        parser.error(f"recipe {args.recipe} starts from its own student ({STARTS[args.recipe]}, STARTS): no --init-from")
    fixed = BATCH_SIZES.get(args.recipe)
    if fixed is not None and args.batch_size not in (None, fixed):
        parser.error(f"--batch-size {args.batch_size}: recipe {args.recipe} trains at its own global batch {fixed} (BATCH_SIZES)")
    batch_size = args.batch_size or fixed or 8
    run(args.recipe, args.seed, args.steps, args.eval_every, args.images, batch_size, args.test_images,
        args.init_from, args.num_steps, tuple(args.export_at))


if __name__ == "__main__":
    main()
