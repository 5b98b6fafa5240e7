"""Train the Fashion-MNIST classifier, our stand-in for the CLIP score (models/fashion-classifier/README.md).

    python -m examples.fashion.train_classifier --out models/fashion-classifier

It sees the same 32x32 padded images the teacher is trained on; random shifts of up to 2 pixels and
horizontal flips make it less sensitive to the small misplacements of generated images. Prompt
alignment of a generator = accuracy of this classifier on its images against the prompts' classes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from examples.fashion.data import CLASSES, load_split, to_model_images
from examples.fashion.models import save_classifier
from examples.fashion.training import Log, limit_threads
from loopfree.classifier import SmallImageClassifier


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift (up to 2 px, background padding) and horizontal flip; x (B, 3, 32, 32) in [-1, 1]."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    x = torch.roll(F.pad(x, (2, 2, 2, 2), value=-1.0), shifts=(dy, dx), dims=(2, 3))[..., 2:34, 2:34]
    return torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x.flip(3), x)


@torch.no_grad()
def accuracy(model: SmallImageClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on uint8 (N, 1, 28, 28) images."""
    model.eval()
    hits = sum((model(to_model_images(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum().item()
               for i in range(0, len(images), batch_size))
    return hits / len(images)


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, width: int, log: Log, seed: int = 0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallImageClassifier(width)
    steps = epochs * (len(images) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)  # converges in few epochs
    step = 0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            if len(idx) < batch_size:
                continue
            loss = F.cross_entropy(model(augment(to_model_images(images[idx]), gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                log(stage="classifier", step=step, loss=round(loss.item(), 4))
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/fashion-classifier"))
    p.add_argument("--work", type=Path, default=Path("runs/fashion-classifier"), help="training log")
    p.add_argument("--width", type=int, default=16, help="channels of the first block (doubling twice)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick trials)")
    p.add_argument("--threads", type=int, default=1, help="1: steadier than 2 when other jobs share the cores")
    args = p.parse_args()
    limit_threads(args.threads)
    log = Log(args.work / "log.jsonl")
    images, labels = load_split("train", args.limit)
    t0 = time.perf_counter()
    model = train(images, labels, args.epochs, args.batch_size, args.width, log)
    wall = time.perf_counter() - t0
    test_images, test_labels = load_split("test")
    acc = accuracy(model, test_images, test_labels)
    info = {"width": args.width, "classes": list(CLASSES), "input": "32x32, grayscale or RGB (averaged), in [-1, 1]",
            "epochs": args.epochs, "batch_size": args.batch_size, "train_images": len(images),
            "test_accuracy": acc, "test_images": len(test_images), "train_wall_s": round(wall, 1)}
    save_classifier(model, args.out, info)
    log(stage="done", **{k: v for k, v in info.items() if k != "classes"})


if __name__ == "__main__":
    main()
