"""Does a regression student score differently on its pairs' noise than on noise it never saw? (docs/method.md,
"Pair noise that was evaluation noise").

Until the pair seeds moved below 2**32, pair i's noise was seed i's, which the test protocol gives test image i
(torch's CPU generator keeps a seed's low 32 bits). This scores an exported student twice against the VALIDATION
reference (training images; the test images are not touched): the test protocol's 1000 prompts with seeds 0-999
(the pairs' noise) and with seeds 50000-50999 (noise no run saw). `init` is the initial student, trained on no pair.

    .venv/bin/python -m benchmarks.fashion.pair_noise_check RUN [RUN ...]   # RUN: a study run name, or init
"""

from __future__ import annotations

import argparse
import json

from benchmarks.fashion.study import CLASSIFIER, TEACHER, WORK, test_set, validation_reference

UNSEEN_FROM = 50_000


def main() -> None:
    import torch

    from loopfree.classifier import load_classifier
    from loopfree.evaluation import EvalSet, generate_features, metrics
    from loopfree.features import InceptionFeatures
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    inception, (classifier, classes) = InceptionFeatures(batch_size=50), load_classifier(CLASSIFIER)
    reference, prompts = validation_reference(inception), test_set(args.images).prompts
    for run in args.runs:
        pipe = TiUEPipeline.from_components(load_components(TEACHER)) if run == "init" else \
            TiUEPipeline.from_pretrained(WORK / run / "export")
        pipe.set_progress_bar_config(disable=True)
        for first in (0, UNSEEN_FROM):
            eval_set = EvalSet(prompts, tuple(range(first, first + args.images)))
            gen = generate_features(pipe, eval_set, range(args.images), inception, classifier, classes)
            print(json.dumps({"run": run, "seeds_from": first, **metrics(gen, reference)}), flush=True)


if __name__ == "__main__":
    main()
