"""Where the student's recall is lost, per garment class: a finished student against the teacher's 50-step sampler at
guidance 4.5 and 2, on the VALIDATION reference (1000 labelled training images; never the test split).

Recall and coverage are split by the class of the REAL image (its Fashion-MNIST label): recall_c is the share of
class-c reference images inside some generated image's k-NN ball, coverage_c the share whose own k-NN ball holds a
generated image (`loopfree.metrics.prdc`, restricted to one class's rows; every generated image counts, whatever
its prompt). The within-class spread is the mean pairwise Inception distance among the images of one class (real:
its label; generated: its prompt). A grid of real, student and teacher images per class goes beside the table:
    .venv/bin/python -m benchmarks.fashion.class_recall full-ttur5-guid2-1-x0err@4000-s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.fashion.recall_spread import IMAGES, SEED0
from benchmarks.fashion.study import CLASSIFIER, TEACHER, WORK, TeacherSampler, validation_reference, validation_set

OUT = Path("benchmarks/results")
LABELS = Path("data/fashion-mnist/train-val-labels-idx1-ubyte.gz")


def per_class_recall(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict:
    """{"recall": [..], "coverage": [..]} per class 0..max(label), with prdc's balls (real (N, D), fake (M, D))."""
    from loopfree.metrics import knn_radii

    real_r, fake_r = knn_radii(real, k), knn_radii(fake, k)
    d = torch.cdist(real.double(), fake.double())  # (N, M)
    found = (d < fake_r[None, :]).any(1)  # real i inside some generated ball
    covered = d.min(1).values < real_r  # some generated image inside real i's ball
    classes = range(int(real_labels.max()) + 1)
    return {"recall": [float(found[real_labels == c].double().mean()) for c in classes],
            "coverage": [float(covered[real_labels == c].double().mean()) for c in classes]}


def within_class_spread(features: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Mean pairwise Euclidean distance among the rows of each class (the diagonal excluded)."""
    spread = []
    for c in range(int(labels.max()) + 1):
        x = features[labels == c].double()
        n = len(x)
        spread.append(float(torch.cdist(x, x).sum() / (n * (n - 1))) if n > 1 else float("nan"))
    return spread


def generate(sampler, inception, classifier, classes) -> dict:
    """The recall-spread protocol's 1000 images: Inception features, prompt classes and pixels (uint8, 1 channel)."""
    from loopfree.classifier import prompt_labels
    from loopfree.features import to_uint8

    eval_set = validation_set(IMAGES, SEED0)
    feats, pixels = [], []
    for start in range(0, IMAGES, 50):
        part = range(start, start + 50)
        images = sampler([eval_set.prompts[i] for i in part], seeds=[eval_set.seeds[i] for i in part], batch_size=50,
                         output_type="np").images
        images = to_uint8(images)  # (50, 3, H, W)
        feats.append(inception(images))
        pixels.append(images[:, :1])
    return {"inception": torch.cat(feats), "pixels": torch.cat(pixels),
            "label": prompt_labels(eval_set.prompts, classes)}


def save_grid(real_pixels, real_labels, systems: dict, path: Path, per_class: int = 12) -> None:
    """Per class a block of rows: real images, then each system's first `per_class` images of that prompt class."""
    from PIL import Image

    rows = []
    for c in range(int(real_labels.max()) + 1):
        blocks = [real_pixels[real_labels == c]] + [s["pixels"][s["label"] == c] for s in systems.values()]
        rows += [torch.cat(list(b[:per_class, 0]), dim=1) for b in blocks]
    grid = torch.cat(rows, 0).numpy()
    Image.fromarray(grid).save(path)


def main() -> None:
    from examples.fashion.data import CLASSES, load_validation, read_labels, to_model_images
    from loopfree.classifier import load_classifier
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished study run with an export under runs/fashion-study/")
    args = parser.parse_args()
    inception, (classifier, classes) = InceptionFeatures(batch_size=50), load_classifier(CLASSIFIER)
    ref, real_labels = validation_reference(inception), read_labels(LABELS)
    real_pixels = ((to_model_images(load_validation())[:, :1] + 1) * 127.5).round().to(torch.uint8)
    student = TiUEPipeline.from_pretrained(WORK / args.run / "export")
    teacher = TiUEPipeline.from_components(load_components(TEACHER))
    for pipe in (student, teacher):
        pipe.set_progress_bar_config(disable=True)
    samplers = {args.run: student, "teacher 50 steps cfg 4.5": TeacherSampler(teacher, 50, 4.5),
                "teacher 50 steps cfg 2": TeacherSampler(teacher, 50, 2.0)}
    systems = {name: generate(s, inception, classifier, classes) for name, s in samplers.items()}
    rows = {"real": {"spread": within_class_spread(ref, real_labels)}}
    for name, s in systems.items():
        rows[name] = {**per_class_recall(ref, real_labels, s["inception"]),
                      "spread": within_class_spread(s["inception"], s["label"])}
    result = {"classes": list(CLASSES), "rows": rows, "grid_rows": ["real", *systems]}
    (OUT / "class_recall.json").write_text(json.dumps(result, indent=1) + "\n")
    save_grid(real_pixels, real_labels, systems, OUT / "class_recall_grid.png")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
