"""The regression-only probe (benchmarks/fashion/pair_fit.py): its fit trains the student's whole map towards the
stored pairs (the error on them falls), and its pair_text gives exactly the text encoder's states."""

import copy
import dataclasses

import torch

from benchmarks.fashion.pair_fit import fit, mse, pair_text
from loopfree.pairs import TeacherPairs
from loopfree.pipeline import TiUEPipeline


def tiny_pairs(components, count=6):
    gen = torch.Generator().manual_seed(0)
    shape = (count, components.unet.config.in_channels, components.unet.config.sample_size,
             components.unet.config.sample_size)
    words = torch.randint(1, 20, (2, 77), generator=gen)
    noise, x0 = torch.randn(shape, generator=gen), 0.5 * torch.randn(shape, generator=gen)
    return TeacherPairs(noise, x0, words[torch.arange(count) % 2])


def test_pair_text_gives_the_encoders_states_of_the_pairs_asked_for(tiny_components):
    ids = tiny_pairs(tiny_components).input_ids  # two distinct prompts over six pairs
    text_of = pair_text(tiny_components.text_encoder, ids)
    with torch.no_grad():
        direct = tiny_components.text_encoder(ids[[3, 0, 5]])[0]
    assert torch.allclose(text_of(torch.tensor([3, 0, 5])), direct, atol=1e-6)


def test_fit_lowers_the_students_error_on_its_pairs(tiny_components):
    pairs = tiny_pairs(tiny_components)
    student = TiUEPipeline.from_components(dataclasses.replace(tiny_components, unet=copy.deepcopy(tiny_components.unet))).student
    text_of = pair_text(tiny_components.text_encoder, pairs.input_ids)
    before = mse(student, pairs.noise, text_of(torch.arange(len(pairs))), pairs.x0)
    losses = fit(student, pairs, text_of, steps=40, batch_size=6, lr=1e-3, seed=0)
    after = mse(student, pairs.noise, text_of(torch.arange(len(pairs))), pairs.x0)
    assert len(losses) == 40 and after < 0.5 * before, (before, after)
    assert not any(p.data_ptr() == q.data_ptr() for p, q in zip(student.parameters(), tiny_components.unet.parameters()))
