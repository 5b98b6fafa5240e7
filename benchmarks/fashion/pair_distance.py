"""How far the regression pairs are from what a student draws: latent mean squared error between the initial
student (the teacher's UNet in the TiUE pipeline) or finished study runs and the teacher's 4-step (guidance 3)
and 50-step (guidance 2) DDIM samples, from the same 64 noises and prompts, plus each target's latent variance.
Reads the exports under runs/fashion-study/ (not committed):
    .venv/bin/python -m benchmarks.fashion.pair_distance full-ttur5-guid2-1-x0err-tmax499@2000-s1
"""

import argparse

from benchmarks.fashion.study import TEACHER, WORK

TARGETS = {"teacher 4 steps cfg 3": (4, 3.0), "teacher 50 steps cfg 2": (50, 2.0)}


def main() -> None:
    from examples.fashion.data import random_captions
    from loopfree.pipeline import TiUEPipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="study run names (folders of runs/fashion-study with export/)")
    args = parser.parse_args()
    prompts, seeds = random_captions(64, seed=123), list(range(5000, 5064))  # seeds no evaluation uses
    teacher = TiUEPipeline.from_pretrained(TEACHER)
    targets = {name: teacher.sample_multistep(prompts, num_inference_steps=steps, guidance_scale=cfg, seeds=seeds,
                                              batch_size=64, output_type="latent").images
               for name, (steps, cfg) in TARGETS.items()}
    print(" | ".join(f"{name}: latent variance {x0.var().item():.3f}" for name, x0 in targets.items()))
    students = {"initial student": teacher} | {run: TiUEPipeline.from_pretrained(WORK / run / "export") for run in args.runs}
    for name, pipe in students.items():
        pipe.set_progress_bar_config(disable=True)
        x0 = pipe(prompts, seeds=seeds, batch_size=64, output_type="latent").images  # (64, C, H, W)
        print(f"{name}: " + ", ".join(f"MSE to {t} {((x0 - y) ** 2).mean().item():.3f}" for t, y in targets.items()))


if __name__ == "__main__":
    main()
