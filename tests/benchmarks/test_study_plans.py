"""The study's initial-student evaluation is cached per plan: runs share it only when their students have the same
timesteps (benchmarks/fashion/study.py, plan_tag)."""

from benchmarks.fashion.study import plan_tag
from benchmarks.fashion.study_recipes import BASE, RECIPES
from loopfree.config import DistillConfig


def config(recipe: str) -> DistillConfig:
    return DistillConfig(**{**BASE, **RECIPES[recipe]})


def test_runs_share_the_initial_evaluation_only_when_their_plans_are_the_same():
    tags = {r: plan_tag(config(r)) for r in ("full-ttur5-guid2-1-x0err", "full-ttur5-guid2-1-x0err-gan0.01",
                                               "full-ttur5-guid2-1-x0err-trailing", "k8-from751", "sb-paper", "sb-x0err-t751")}
    assert tags["full-ttur5-guid2-1-x0err"] == tags["full-ttur5-guid2-1-x0err-gan0.01"] == ""  # the committed cache name
    assert tags["sb-paper"] == ""  # the 1-step mode has one plan (t = 999)
    assert tags["sb-x0err-t751"] == "-t751"  # the 1-step mode at another timestep has its own
    assert tags["full-ttur5-guid2-1-x0err-trailing"] == "-trailing-k4"
    assert tags["k8-from751"] == "-t751-626-501-376-251-167-84-1-k8"
    assert plan_tag(DistillConfig(**{**BASE, "spacing": "trailing", "num_steps": 2})) == "-trailing-k2"


def test_every_recipe_is_a_valid_distill_config_that_sets_what_it_names():
    configs = {r: config(r) for r in RECIPES}  # DistillConfig raises ConfigError on an invalid key or value
    assert configs["full-ttur5-guid2-1-x0err-tmax299-fst299-kl1"].lambda_kl == 1.0
    assert configs["full-ttur5-guid2-1-x0err-tmax299-fst299"].lambda_kl == BASE["lambda_kl"] == 0.1
    assert (configs["full-ttur5-guid2-1-x0err-tmax299-fst299"].vsd_t_max,
            configs["full-ttur5-guid2-1-x0err-tmax299-fst299"].fake_score_t_max) == (299, 299)
