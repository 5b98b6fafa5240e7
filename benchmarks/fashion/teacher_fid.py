"""The teacher's own quality: FID, PRDC and classifier accuracy of its 50-step CFG samples against the
Fashion-MNIST test set (model card numbers; the full comparison of systems is the evaluation job's).

    python -m benchmarks.fashion.teacher_fid --num 1000 --reference 2000

Prompts are random captions (fixed seed), seeds 0..N-1; reference images are the first `--reference`
test images in the same 32x32 padded RGB framing the teacher was trained on. FID uses the standard
Inception network (`loopfree.features.InceptionFeatures`) on uint8 images, as they would be saved.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from examples.fashion.data import CLASSES, load_split, random_captions, to_model_images
from examples.fashion.training import limit_threads
from loopfree.classifier import load_classifier
from loopfree.features import InceptionFeatures, to_uint8
from loopfree.metrics import frechet_distance, prdc
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import load_components


def prompt_classes(prompts: list[str]) -> torch.Tensor:
    """Class index named in each caption (longest name first: "ankle boot" before "boot")."""
    order = sorted(range(len(CLASSES)), key=lambda c: -len(CLASSES[c]))
    return torch.tensor([next(c for c in order if CLASSES[c] in p) for p in prompts])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, default=Path("models/fashion-teacher"))
    p.add_argument("--classifier", type=Path, default=Path("models/fashion-classifier"))
    p.add_argument("--num", type=int, default=1000, help="generated images")
    p.add_argument("--reference", type=int, default=2000, help="test images")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baselines", action="store_true",
                   help="also score --num training images and their VAE reconstructions (the floor and the VAE's share)")
    args = p.parse_args()
    limit_threads(args.threads)
    prompts = random_captions(args.num, seed=0)
    pipe = TiUEPipeline.from_components(load_components(args.teacher))
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    fake = pipe.sample_multistep(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                 seeds=list(range(args.num)), batch_size=100, output_type="np").images
    gen_s = time.perf_counter() - t0
    fake = to_uint8(fake)  # (N, 3, 32, 32)
    real = ((to_model_images(load_split("test", args.reference)[0]) + 1) * 127.5).round().to(torch.uint8)
    with torch.no_grad():
        hits = load_classifier(args.classifier)[0](fake.float() / 127.5 - 1).argmax(1) == prompt_classes(prompts)
    inception = InceptionFeatures(batch_size=50)
    f_fake, f_real = inception(fake), inception(real)
    result = {"teacher": str(args.teacher), "steps": args.steps, "guidance_scale": args.guidance,
              "generated": args.num, "reference_test_images": args.reference,
              "fid": frechet_distance(f_real, f_fake), **prdc(f_real, f_fake),
              "classifier_accuracy": hits.float().mean().item(), "generate_s": round(gen_s, 1),
              "total_s": round(time.perf_counter() - t0, 1)}
    if args.baselines:
        result.update(baselines(pipe, inception, f_real, args.num))
    print(json.dumps(result, indent=2))


@torch.no_grad()
def baselines(pipe: TiUEPipeline, inception: InceptionFeatures, f_real: torch.Tensor, num: int) -> dict[str, float]:
    """FID of real training images (what a perfect generator would score at this sample size) and of their
    VAE reconstructions (what the teacher's decoder alone costs)."""
    x = to_model_images(load_split("train", num)[0])
    recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    as_uint8 = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return {"fid_train_images": frechet_distance(f_real, inception(as_uint8(x))),
            "fid_vae_reconstructions": frechet_distance(f_real, inception(as_uint8(recon)))}


if __name__ == "__main__":
    main()
