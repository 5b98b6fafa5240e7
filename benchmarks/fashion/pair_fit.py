"""Can the one-pass student follow the teacher's map from noise to sample at all? A regression-only student
(Luhman and Luhman, "Knowledge Distillation in Iterative Generative Models for Improved Sampling Speed", 2021): the
initial student (the teacher's UNet in the TiUE pipeline, K = 4) trained on nothing but the latent mean squared error
to the teacher's 50-step DDIM samples at guidance 2 (the VSD teacher's) from the same noise and prompt.

Every VSD recipe of the study loses recall in the layouts, and every regression target tried (docs/method.md, the
regression pairs) pulled the student between layouts without it following them. This measures the map's reach with
no distribution matching in the way: the error on the training pairs and on noise no pair used, and the samples'
FID, precision, recall, coverage and alignment on the VALIDATION reference (1000 training images; never the test
split) with recall_spread.py's protocol (1000 images, seeds 20000-20999), where the held-out error is taken against
the teacher's own samples from those noises. The pairs are the study's (`study_pairs`: caption i % 80, pair seed
2**31 + i), so they are cached and shared with the regression recipes.
    .venv/bin/python -m benchmarks.fashion.pair_fit --pairs 8192 --steps 4000
adds its rows to benchmarks/results/pair_fit.md (and .json) and exports the student to
runs/fashion-study/pair-fit-<pairs>@<steps>-s<seed>/export, which a study recipe can start from (STARTS in
study_recipes.py).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.fashion.recall_spread import IMAGES, SEED0, row
from benchmarks.fashion.study import CLASSIFIER, TEACHER, WORK, validation_reference, validation_set

OUT = Path("benchmarks/results/pair_fit.md")


def fit(student, pairs, text_of, steps: int, batch_size: int, lr: float, seed: int, report=None) -> list[float]:
    """Adam on mean((student(z, prompt) - x0_teacher)^2) over pairs drawn at random: the whole map, no VSD, no EMA.
    `text_of(pair indices)` gives their frozen text states; `report(step)` is called every 500 updates and at the end.
    Returns the loss of every update."""
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    draw = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(pairs), (batch_size,), generator=draw)
        x0, _ = student(pairs.noise[idx], text_of(idx))  # (B, C, h, w)
        loss = ((x0 - pairs.x0[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # the study's student clip
        opt.step()
        losses.append(loss.item())
        if report is not None and ((step + 1) % 500 == 0 or step + 1 == steps):
            report(step + 1)
    return losses


def pair_text(text_encoder, input_ids: torch.Tensor):
    """The pairs' input_ids (N, 77) -> a function from pair indices to their text states, each distinct prompt
    encoded once."""
    unique, inverse = torch.unique(input_ids, dim=0, return_inverse=True)  # (U, 77), (N,)
    with torch.no_grad():
        states = text_encoder(unique)[0]  # (U, 77, D)
    return lambda idx: states[inverse[idx]]


@torch.no_grad()
def mse(student, noise: torch.Tensor, text: torch.Tensor, x0: torch.Tensor, batch_size: int = 100) -> float:
    """Mean squared latent error of the student's samples from `noise` against `x0`."""
    parts = [(student(noise[i:i + batch_size], text[i:i + batch_size])[0] - x0[i:i + batch_size]).pow(2).flatten(1)
             for i in range(0, len(noise), batch_size)]
    return torch.cat(parts).mean().item()


class Latents:
    """Stored latents (by seed) decoded like a TiUE pipeline's output: the teacher's held-out samples, scored once."""

    def __init__(self, pipe, latents: torch.Tensor, seeds):
        self.pipe, self.by_seed = pipe, dict(zip(seeds, latents))

    def __call__(self, prompts, seeds, batch_size, output_type):
        from types import SimpleNamespace

        images = self.pipe.decode_latents(torch.stack([self.by_seed[s] for s in seeds]))  # (B, 3, H, W)
        return SimpleNamespace(images=images.permute(0, 2, 3, 1).numpy())


def main() -> None:
    import copy

    from benchmarks.fashion.study import study_pairs
    from benchmarks.fashion.study_recipes import BASE, BEST
    from loopfree.classifier import load_classifier
    from loopfree.config import DistillConfig
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4, help="the study's student learning rate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    components = load_components(TEACHER)
    config = DistillConfig(**{**BASE, **BEST, "regression_weight": 1.0, "regression_pairs": args.pairs})
    pairs = study_pairs(config, components)  # the teacher's 50 steps at guidance 2 (config.pair_cfg)
    teacher = TiUEPipeline.from_components(components)  # also the initial student (K = 4, leading)
    teacher.set_progress_bar_config(disable=True)
    held, held_noise, held_text, held_x0 = held_out(teacher, config)
    text_of = pair_text(components.text_encoder, pairs.input_ids)
    seen = (pairs.noise[:IMAGES], text_of(torch.arange(IMAGES)), pairs.x0[:IMAGES])

    def errors(pipe) -> dict:
        return {"train_mse": mse(pipe.student, *seen), "heldout_mse": mse(pipe.student, held_noise, held_text, held_x0)}

    inception, (classifier, classes) = InceptionFeatures(batch_size=50), load_classifier(CLASSIFIER)
    ref = validation_reference(inception)
    command = ".venv/bin/python -m benchmarks.fashion.pair_fit " + " ".join(sys.argv[1:])
    done = {r["system"] for r in load_rows()}
    if "initial student" not in done:
        record({**row("initial student", teacher, inception, classifier, classes, ref), **errors(teacher)}, command)
    target = f"teacher {config.regression_teacher_steps} steps cfg {config.pair_cfg:g} (the pairs' sampler)"
    if target not in done:
        record(row(target, Latents(teacher, held_x0, held.seeds), inception, classifier, classes, ref), command)
    name = f"pair-fit-{args.pairs}@{args.steps}-s{args.seed}"
    student = TiUEPipeline.for_method(components, config, copy.deepcopy(components.unet))
    student.set_progress_bar_config(disable=True)
    curve, t0 = [], time.perf_counter()

    def report(step: int) -> None:
        curve.append({"step": step, **errors(student), "s_per_update": round((time.perf_counter() - t0) / step, 3)})
        print(name, json.dumps(curve[-1]), flush=True)

    student.unet.train()
    fit(student.student, pairs, text_of, args.steps, args.batch_size, args.lr, args.seed, report)
    student.unet.eval()
    export(student, name, args)
    result = row(f"regression only: {args.pairs} pairs, {args.steps} updates of {args.batch_size}, seed {args.seed}",
                 student, inception, classifier, classes, ref)
    record({**result, **curve[-1], "curve": curve}, command)


def held_out(teacher, config):
    """The held-out protocol (recall_spread.py's 1000 prompts and seeds), its noises and text states, and the
    teacher's samples from them with the pairs' own sampler (config.regression_teacher_steps, config.pair_cfg)."""
    held = validation_set(IMAGES, SEED0)
    noise, text = teacher.prepare_latents(list(held.seeds)), teacher.encode_prompt(list(held.prompts))
    x0 = teacher.sample_multistep(list(held.prompts), num_inference_steps=config.regression_teacher_steps,
                                  guidance_scale=config.pair_cfg, seeds=list(held.seeds), batch_size=100,
                                  output_type="latent").images  # (1000, C, h, w)
    return held, noise, text, x0


def export(student, name: str, args) -> None:
    """The fitted student as a study run's export and record: what a recipe in STARTS (study_recipes.py) starts from."""
    student.save_pretrained(WORK / name / "export", safe_serialization=True)
    (WORK / name / "run.json").write_text(json.dumps({"recipe": name, "seed": args.seed, "steps": args.steps,
                                                      "init_from": None, "batch_size": args.batch_size, "num_steps": 4,
                                                      "mode": "tiue", "uses_training_images": False}))


def load_rows() -> list[dict]:
    return json.loads(OUT.with_suffix(".json").read_text()) if OUT.with_suffix(".json").is_file() else []


def record(result: dict, command: str) -> None:
    """Add one measured row (replacing a row of the same name) to pair_fit.json and rewrite the table from it; under
    a lock, so that two seeds run side by side keep each other's rows."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "pair_fit.lock", "w") as lock:  # under runs/: not a result
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in load_rows() if r["system"] != result["system"]] + [{**result, "command": command}]
        OUT.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        write_table(rows)


def write_table(rows: list[dict]) -> None:
    keys = ("train_mse", "heldout_mse", "fid", "precision", "recall", "coverage", "alignment")
    table = ["| system | " + " | ".join(keys) + " | command |", "|---" * (len(keys) + 2) + "|"]
    table += ["| " + r["system"] + " | " + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in keys)
              + f" | `{r['command']}` |" for r in rows]
    curves = [f"- {r['system']}: " + ", ".join(f"{c['step']}: {c['train_mse']:.3f} / {c['heldout_mse']:.3f}"
                                              for c in r["curve"]) for r in rows if "curve" in r]
    about = " ".join(__doc__.split("\n\n")[1].split("\n    ")[0].split())
    OUT.write_text("# Can the one-pass student follow the teacher's map? (regression only)\n\n" + about
                   + "\n\nLatent MSE on the first 1000 training pairs (train_mse) and on the held-out noises (heldout_mse); "
                   + "the latent variance of the teacher's samples is about 2.16 (pair_distance.md). Each row was measured "
                   + "by the command beside it.\n\n" + "\n".join(table) + "\n\nMSE over updates (train / held out):\n\n"
                   + "\n".join(curves) + "\n")


if __name__ == "__main__":
    main()
