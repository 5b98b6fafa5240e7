"""What the study's metrics can reach on Fashion-MNIST: real images, and real images through the teacher's VAE.

Every sample of the teacher and of its students is decoded by the teacher's VAE, so a VAE round trip of real images
(encode to the posterior mean, decode) shows what a latent model would score if it drew exactly the latents of real
images. Both rows use 1000 real TRAINING images that are neither in the validation split nor in the test reference
(the first 1000 of the shipped GAN subset, data/fashion-mnist/README.md), scored like a study row against both
references:
    .venv/bin/python -m benchmarks.fashion.ceilings      # writes benchmarks/results/fashion_ceilings.md
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.fashion.study import TEACHER, test_reference, validation_reference

OUT = Path("benchmarks/results/fashion_ceilings.md")
IMAGES = 1000


def vae_round_trip(vae, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> decode(posterior mean of encode(images)), clipped to [-1, 1]."""
    with torch.no_grad():
        return torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample.clamp(-1, 1) for b in images.split(batch)])


def row(name: str, images: torch.Tensor, inception, references: dict[str, torch.Tensor]) -> str:
    from loopfree.features import to_uint8
    from loopfree.metrics import frechet_distance, prdc

    pixels = to_uint8((images + 1) / 2)
    feats = inception(pixels)  # InceptionFeatures batches by itself
    cells = [f"{(pixels > 10).float().mean():.2f}"]
    for ref in references.values():
        m = prdc(ref, feats)
        cells += [f"{frechet_distance(feats, ref):.2f}", *(f"{m[k]:.3f}" for k in ("precision", "recall", "coverage"))]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    from examples.fashion.data import load_gan_images, to_model_images
    from loopfree.features import InceptionFeatures
    from loopfree.presets import load_components

    torch.set_num_threads(1)
    inception = InceptionFeatures(batch_size=50)
    references = {"validation": validation_reference(inception), "test": test_reference(inception)}
    real = to_model_images(load_gan_images())[:IMAGES]  # (1000, 3, 32, 32) in [-1, 1]
    rows = [row("real training images", real, inception, references),
            row("the same through the teacher's VAE", vae_round_trip(load_components(TEACHER).vae, real), inception,
                references)]
    head = " | ".join(f"{r} {k}" for r in references for k in ("FID", "precision", "recall", "coverage"))
    about = " ".join(__doc__.split("\n\n")[1].split(":\n")[0].split())  # the docstring's second paragraph, no command
    OUT.write_text("# Metric ceilings on the Fashion-MNIST teacher\n\n" + about + ".\n\n"
                   + f"Command: `.venv/bin/python -m benchmarks.fashion.ceilings`. {IMAGES} images per row; the study's "
                   "protocol otherwise (Inception features, k = 5). Pixels > 10: the share of pixels above 10/255.\n\n"
                   + f"| images | pixels > 10 | {head} |\n|" + "---|" * 10 + "\n" + "\n".join(rows) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
