"""The per-class split of recall and coverage (benchmarks/fashion/class_recall.py) on hand-computed 1-D cases."""

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.fashion.class_recall import per_class_recall, save_grid, within_class_spread
from loopfree.metrics import prdc


def test_per_class_recall_and_coverage_match_a_hand_computed_case_and_average_to_prdc():
    real = torch.tensor([[0.0], [1.0], [10.0], [11.0]])  # k = 1: every real radius is 1
    labels = torch.tensor([0, 0, 1, 1])
    fake = torch.tensor([[0.1], [0.3], [50.0], [51.0]])  # radii 0.2, 0.2, 1, 1
    out = per_class_recall(real, labels, fake, k=1)
    # real 0 lies 0.1 from fake 0 (< its radius 0.2); real 1 lies 0.7 from fake 1 (> 0.2): class 0 recall 1/2.
    # Both class-0 reals hold a fake within their radius 1; class 1 is 39 away from every fake.
    assert out == {"recall": [0.5, 0.0], "coverage": [1.0, 0.0]}
    whole = prdc(real, fake, k=1)  # equal class sizes: the class mean is the whole set's value
    assert np.mean(out["recall"]) == pytest.approx(whole["recall"])
    assert np.mean(out["coverage"]) == pytest.approx(whole["coverage"])


def test_within_class_spread_is_the_mean_pairwise_distance_per_class():
    features = torch.tensor([[0.0], [0.0], [6.0], [5.0], [8.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert within_class_spread(features, labels) == pytest.approx([4.0, 3.0])  # (0 + 6 + 6) / 3 and 3


def test_grid_puts_each_class_real_row_above_its_systems_rows(tmp_path):
    real = torch.stack([torch.full((1, 2, 2), 10 * i, dtype=torch.uint8) for i in range(4)])  # (4, 1, 2, 2)
    real_labels = torch.tensor([0, 1, 0, 1])
    system = {"pixels": torch.full((4, 1, 2, 2), 200, dtype=torch.uint8), "label": torch.tensor([1, 1, 0, 0])}
    save_grid(real, real_labels, {"s": system}, tmp_path / "g.png", per_class=2)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (8, 4)  # 2 classes x (real, s) rows of 2 images, 2 x 2 pixels each
    assert grid[0:2, 0:2].max() == 0 and grid[0:2, 2:4].min() == 20  # class 0's reals: images 0 and 2
    assert grid[4:6, 0:2].min() == 10 and (grid[2:4] == 200).all() and (grid[6:8] == 200).all()


def test_markdown_has_a_row_per_system_and_the_class_mean(tmp_path):
    from benchmarks.fashion.class_recall import write_markdown

    result = {"classes": ["a", "b"], "grid_rows": ["real", "s"],
              "rows": {"real": {"spread": [1.0, 3.0]}, "s": {"recall": [0.5, 0.0], "coverage": [1.0, 0.0],
                                                              "spread": [2.0, 2.0]}}}
    write_markdown(result, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| s | 0.500 | 0.000 | 0.250 |" in text and "| real | 1.000 | 3.000 | 2.000 |" in text
    assert text.count("| real |") == 1  # the reference has a spread, no recall of itself


def test_keep_pixels_returns_the_samplers_output_and_keeps_its_first_channel_as_uint8_in_call_order():
    from types import SimpleNamespace

    from benchmarks.fashion.class_recall import KeepPixels

    def sampler(prompts, seeds, batch_size, output_type):  # image n is flat at seed / 10, (n, H, W, 3) in [0, 1]
        return SimpleNamespace(images=np.stack([np.full((2, 2, 3), s / 10, dtype=np.float32) for s in seeds]))

    keep = KeepPixels(sampler)
    first = keep(["a"], seeds=[10], batch_size=1, output_type="np")
    keep(["b", "c"], seeds=[0, 5], batch_size=2, output_type="np")
    assert first.images.shape == (1, 2, 2, 3)
    pixels = torch.cat(keep.pixels)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 1, 2, 2)
    assert pixels[:, 0, 0, 0].tolist() == [255, 0, 128]  # round(0.5 * 255) = 128


def test_export_dir_takes_a_runs_final_export_or_one_saved_midway_and_names_the_run_without_either(tmp_path, monkeypatch):
    import benchmarks.fashion.class_recall as class_recall

    monkeypatch.setattr(class_recall, "WORK", tmp_path)
    for folder in ("a-s1/export", "b@4000-s1/export@2000"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "model_index.json").write_text("{}")
    (tmp_path / "c-s1").mkdir()
    assert class_recall.export_dir("a-s1") == tmp_path / "a-s1" / "export"
    assert class_recall.export_dir("b@4000-s1/export@2000") == tmp_path / "b@4000-s1" / "export@2000"
    with pytest.raises(SystemExit, match="c-s1: no exported pipeline"):
        class_recall.export_dir("c-s1")
