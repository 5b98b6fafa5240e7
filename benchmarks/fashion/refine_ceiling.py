"""How much recall the low-noise recipes can reach: a system's samples, noised to a low timestep and finished by the
teacher's own DDIM sampler, on the VALIDATION reference (1000 training images; never the test split).

The recipes that take VSD's gradient from t <= 299 or t <= 499 only leave each sample's layout (which garment, its
outline) to the student's map at high noise and sharpen its details. If the fake score and VSD did that perfectly,
the student would draw what the teacher draws when it finishes the student's own sample from that noise level
(SDEdit, Meng et al., ICLR 2022). So "student + teacher from t" is what a low-noise recipe would reach from that
student's layouts if VSD and the fake score were exact, and the same for the teacher's 4-step samples says what a
student with the 4-step teacher's layouts would reach. The protocol is recall_spread.py's: 1000 images, prompt i
names class i % 10 with template (i // 10) % 8, seeds 20000-20999; the noise that re-noises image i is drawn from
seed 1_000_000 + its seed (--renoise fresh), or is the image's own z, or z mirrored (rows say which).
    .venv/bin/python -m benchmarks.fashion.refine_ceiling full-ttur5-guid2-1-x0err-tmax299-fst299@2000-s1
adds its rows to benchmarks/results/refine_ceiling.md (and .json, each row with the command that measured it).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.fashion.recall_spread import row
from benchmarks.fashion.study import CLASSIFIER, TEACHER, WORK, TeacherSampler, validation_reference

OUT = Path("benchmarks/results/refine_ceiling.md")
STEPS = 50  # the teacher's 50-step schedule; finishing runs its timesteps at or below the start
GUIDANCE = 2.0  # the VSD teacher's guidance in every recipe refined here
NOISE_SEED0 = 1_000_000


def finish_timesteps(scheduler, t_max: int) -> torch.Tensor:
    """The STEPS-step schedule's timesteps at or below t_max, the first of them the level the sample is noised to."""
    scheduler.set_timesteps(STEPS)
    return scheduler.timesteps[scheduler.timesteps <= t_max]


SOURCES = ("initial", "run", "teacher4")  # the initial student, the run's student, the teacher's 4-step sampler
RENOISE = {"fresh": "", "z": ", re-noised with its own z", "mirrored-z": ", re-noised with its own z mirrored"}


def noise_to(x0: torch.Tensor, seeds, alpha_bar: torch.Tensor, renoise: str = "fresh") -> torch.Tensor:
    """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, eps of image i from its seed alone: "fresh" draws it from
    NOISE_SEED0 + seed; "z" is the very noise z the sample was drawn from (TiUEPipeline.prepare_latents), so x_t is a
    function of z; "mirrored-z" is z flipped left to right, a function of z whose elements are independent of z's."""
    offset = NOISE_SEED0 if renoise == "fresh" else 0
    eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(offset + s)) for s in seeds])
    eps = eps.flip(-1) if renoise == "mirrored-z" else eps
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps.to(x0)


class Refined:
    """A sampler's latents x0, noised to t_start = finish_timesteps[0] (x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
    eps) and finished by the teacher's DDIM with CFG: called like a TiUE pipeline (what generate_features needs)."""

    def __init__(self, source, teacher, t_max: int, renoise: str = "fresh"):
        from diffusers import DDIMScheduler

        self.source, self.teacher, self.renoise = source, teacher, renoise
        self.scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
        self.timesteps = finish_timesteps(self.scheduler, t_max)

    @torch.no_grad()
    def __call__(self, prompts, seeds, batch_size, output_type):
        x0 = self.source(prompts, seeds=seeds, batch_size=batch_size, output_type="latent").images  # (B, 4, h, w)
        z = noise_to(x0, seeds, self.scheduler.alphas_cumprod[self.timesteps[0]], self.renoise)
        z = self.teacher.denoise(z, self.teacher.encode_prompt(list(prompts)), self.scheduler, GUIDANCE, int(self.timesteps[0]))
        if output_type == "latent":
            return SimpleNamespace(images=z)  # (B, 4, h, w): what regression pairs store
        return SimpleNamespace(images=self.teacher.decode_latents(z).permute(0, 2, 3, 1).numpy())  # (B, H, W, 3) in [0, 1]


def main() -> None:
    from loopfree.classifier import load_classifier
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished study run with an export under runs/fashion-study/")
    parser.add_argument("--t-max", type=int, nargs="+", default=[299, 499])
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--renoise", choices=RENOISE, default="fresh", help="the noise a sample is re-noised with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    inception, (classifier, classes) = InceptionFeatures(batch_size=50), load_classifier(CLASSIFIER)
    ref = validation_reference(inception)
    teacher = TiUEPipeline.from_components(load_components(TEACHER))  # also the initial student (its UNet, K = 4)
    teacher.set_progress_bar_config(disable=True)
    command = ".venv/bin/python -m benchmarks.fashion.refine_ceiling " + " ".join(sys.argv[1:])
    for source in args.sources:
        name, sampler = source_sampler(source, args.run, teacher)
        if args.renoise == "fresh":
            record(row(name, sampler, inception, classifier, classes, ref), command)
        for t_max in args.t_max:
            refined = Refined(sampler, teacher, t_max, args.renoise)
            label = f"{name} + teacher from t = {int(refined.timesteps[0])}{RENOISE[args.renoise]}"
            record(row(label, refined, inception, classifier, classes, ref), command)


def source_sampler(source: str, run: str, teacher):
    """(row name, sampler): the initial student (the teacher's UNet as a K = 4 TiUE student), the run's exported
    student, or the teacher's best 4-step sampler (guidance 3, chosen on validation)."""
    from loopfree.pipeline import TiUEPipeline

    if source == "initial":
        return "initial student", teacher
    if source == "teacher4":
        return "teacher 4 steps cfg 3", TeacherSampler(teacher, 4, 3.0)
    student = TiUEPipeline.from_pretrained(WORK / run / "export")
    student.set_progress_bar_config(disable=True)
    return run, student


def record(result: dict, command: str) -> None:
    """Add one measured row (replacing a row of the same name) to refine_ceiling.json and rewrite the table from it;
    under a lock, so that two commands run side by side (one per source) keep each other's rows."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "refine_ceiling.lock", "w") as lock:  # under runs/: not a result
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(OUT.with_suffix(".json").read_text()) if OUT.with_suffix(".json").is_file() else []
        rows = [r for r in rows if r["system"] != result["system"]] + [{**result, "command": command}]
        OUT.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        write_table(rows)


def write_table(rows: list[dict]) -> None:
    keys = ("fid", "precision", "recall", "coverage", "alignment")
    table = ["| system | " + " | ".join(keys) + " | command |", "|---" * (len(keys) + 2) + "|"]
    table += ["| " + r["system"] + " | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | `{r['command']}` |" for r in rows]
    about = " ".join(__doc__.split("\n\n")[1].split("\n    ")[0].split())
    OUT.write_text("# The recall a low-noise recipe can reach\n\n" + about + f"\n\nFinishing: the teacher's {STEPS}-step DDIM "
                   + f"schedule at guidance {GUIDANCE:g}. Each row was measured by the command beside it.\n\n"
                   + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
