"""The committed Fashion-MNIST teacher and classifier (models/, trained by examples/fashion): they load,
generate, and classify. Cheap checks only; the training scripts themselves are not run in CI."""

from pathlib import Path

import pytest
import torch

from benchmarks.fashion.teacher_fid import prompt_classes
from examples.fashion.data import CLASSES, load_split, to_model_images
from loopfree.classifier import load_classifier
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import load_components

ROOT = Path(__file__).resolve().parents[2]
TEACHER, CLASSIFIER = ROOT / "models" / "fashion-teacher", ROOT / "models" / "fashion-classifier"
FASHION_SUBSET = ROOT / "data" / "fashion-mnist"  # the first 1000 test images, shipped (MIT)


@pytest.fixture(scope="module")
def teacher():
    return load_components(TEACHER)


def test_committed_teacher_is_small_and_in_diffusers_layout():
    size = sum(f.stat().st_size for f in TEACHER.rglob("*") if f.is_file())
    assert size < 30 * 2**20, size
    assert not list(TEACHER.rglob("*.bin")) and len(list(TEACHER.rglob("*.safetensors"))) == 3


def test_teacher_runs_as_tiue_and_as_the_multistep_teacher(teacher):
    pipe = TiUEPipeline.from_components(teacher, num_steps=4)
    pipe.set_progress_bar_config(disable=True)
    tiue = pipe(["a photo of a sneaker", "a bag"], seeds=[0, 1], output_type="np").images
    assert tiue.shape == (2, 32, 32, 3) and tuple(pipe.plan.timesteps) == (751, 501, 251, 1)
    multi = pipe.sample_multistep(["a photo of a sneaker"], num_inference_steps=5, guidance_scale=4.5, seeds=[0],
                                  output_type="np").images
    assert multi.shape == (1, 32, 32, 3) and torch.isfinite(torch.as_tensor(multi)).all()


def test_classifier_recognises_real_test_images():
    images, labels = load_split("test", limit=200, data_dir=FASHION_SUBSET)
    with torch.no_grad():
        predicted = load_classifier(CLASSIFIER)[0](to_model_images(images)).argmax(1)
    assert (predicted == labels).float().mean() >= 0.85


@pytest.mark.integration  # slow: 20 images x 10 CFG steps
def test_teacher_draws_what_the_prompt_names(teacher):
    """Honest floor: on 200 random captions the 50-step CFG samples are classified right 70% of the time
    (chance: 10%); here 20 prompts, 10 DDIM steps, fixed seeds."""
    prompts = [f"a photo of {c}" for c in ("a t-shirt", "a trouser", "a pullover", "a dress", "a coat", "a sandal",
                                           "a shirt", "a sneaker", "a bag", "an ankle boot")] * 2
    pipe = TiUEPipeline.from_components(teacher)
    pipe.set_progress_bar_config(disable=True)
    images = pipe.sample_multistep(prompts, num_inference_steps=10, guidance_scale=4.5, seeds=list(range(20)),
                                   batch_size=20, output_type="np").images
    with torch.no_grad():
        predicted = load_classifier(CLASSIFIER)[0](torch.as_tensor(images).permute(0, 3, 1, 2) * 2 - 1).argmax(1)
    assert (predicted == prompt_classes(prompts)).float().mean() >= 0.5


def test_prompt_classes_reads_the_class_out_of_a_caption():
    assert prompt_classes(["a photo of an ankle boot", "a t-shirt"]).tolist() == [CLASSES.index("ankle boot"), 0]
