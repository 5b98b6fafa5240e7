"""K transfer through a job's `model.student_dir` (docs/method.md, "K transfer"): a K = 2 job starts its student
from a K = 4 student's exported UNet, while the teacher and the fake score stay the teacher's."""

import re

import numpy as np
import pytest
import torch
from loopfree_platform.distill.job import load_job
from loopfree_platform.distill.train import build_components
from loopfree_platform.jobfile import JobError

from loopfree.distiller import Distiller
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import load_student_unet, tiny


@pytest.fixture(scope="module")
def k4_export(tmp_path_factory):
    """A K = 4 pipeline whose UNet differs from the tiny teacher's (every weight shifted by 0.01)."""
    components = tiny().build(seed=0)
    with torch.no_grad():
        for p in components.unet.parameters():
            p.add_(0.01)
    path = tmp_path_factory.mktemp("k4-export")
    TiUEPipeline.from_components(components, num_steps=4).save_pretrained(path)
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_k2_job_with_student_dir_starts_its_student_from_the_k4_export_and_samples_in_two_steps(
        k4_export, smoke_job, write_job):
    job = load_job(write_job(smoke_job({"model": {"student_dir": str(k4_export)}, "method": {"num_steps": 2}})))
    components, student = build_components(job)
    exported = load_student_unet(k4_export / "unet")  # the UNet directory itself is accepted too
    teacher = tiny().build(seed=0).unet
    assert same_weights(student, exported) and not same_weights(student, teacher)
    assert same_weights(components.unet, teacher)  # the teacher (and the fake score built from it) unchanged

    distiller = Distiller(components, job.method, student_unet=student)
    assert same_weights(distiller.student.unet, exported)
    pipe = TiUEPipeline.from_distiller(distiller, components)
    assert pipe.config.num_steps == 2 and len(pipe.config.timesteps) == 2
    image = pipe(["a red sneaker"], seeds=[0], output_type="np").images
    assert image.shape[0] == 1 and np.isfinite(image).all()


def test_a_student_dir_without_a_unet_config_is_refused_at_load_with_its_key_and_path(tmp_path, smoke_job, write_job):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(JobError, match="model.student_dir: .*not-a-model is neither a pipeline directory with unet/"):
        load_job(write_job(smoke_job({"model": {"student_dir": str(empty)}})))
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        load_student_unet(empty)
