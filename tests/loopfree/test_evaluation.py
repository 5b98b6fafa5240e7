"""Evaluation during training, the library half (loopfree.evaluation, loopfree.classifier)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from examples.fashion.data import CLASSES, read_labels
from loopfree.classifier import alignment, load_classifier, prompt_labels
from loopfree.evaldata import read_idx
from loopfree.evaluation import EvalSet, merge, metrics
from loopfree.metrics import frechet_distance, gaussian_stats

ROOT = Path(__file__).resolve().parents[2]
SUBSET = ROOT / "data" / "fashion-mnist"


def test_prompt_labels_take_the_longest_class_name():
    classes = ["t-shirt", "shirt", "bag"]
    assert prompt_labels(["a photo of a t-shirt", "a shirt", "A BAG", "a lighthouse"], classes).tolist() == [0, 1, 2, -1]


def test_shipped_classifier_aligns_real_images_with_their_true_class_only():
    images = read_idx(SUBSET / "t10k-images-idx3-ubyte.gz", limit=200)  # (200, 1, 28, 28) uint8
    labels = read_labels(SUBSET / "t10k-labels-idx1-ubyte.gz")[:200]
    framed = F.pad(images, (2, 2, 2, 2)).expand(-1, 3, -1, -1)  # the teacher's 32x32 framing, black border
    model, classes = load_classifier(ROOT / "models" / "fashion-classifier")
    assert classes == list(CLASSES)
    right = prompt_labels([f"a photo of a {classes[i]}" for i in labels], classes)
    wrong = prompt_labels([f"a photo of a {classes[(i + 1) % 10]}" for i in labels], classes)
    assert float(alignment(model, framed, right).float().mean()) >= 0.8  # 90.3% on the full test split
    assert float(alignment(model, framed, wrong).float().mean()) <= 0.2


def test_eval_set_shards_partition_the_images_and_merge_restores_their_order():
    s = EvalSet.cycle(["a", "b", "c"], 7, seed=5)
    assert s.prompts == ("a", "b", "c", "a", "b", "c", "a") and s.seeds == (5, 6, 7, 8, 9, 10, 11)
    shards = [s.shard(r, 3) for r in range(3)]
    assert sorted(i for sh in shards for i in sh) == list(range(7))
    parts = [{"index": torch.tensor(sh), "inception": torch.tensor(sh, dtype=torch.float32)[:, None]} for sh in shards]
    merged = merge(parts[::-1])
    assert merged["index"].tolist() == list(range(7)) and merged["inception"][:, 0].tolist() == list(range(7))
    with pytest.raises(ValueError):
        EvalSet.cycle([], 3)


def test_metrics_match_the_library_metrics_with_features_or_saved_stats():
    g = torch.Generator().manual_seed(0)
    ref, gen = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g) + 0.5
    aligned = torch.tensor([True] * 12 + [False] * 18)
    out = metrics({"inception": gen, "aligned": aligned}, ref)
    assert out["fid"] == pytest.approx(frechet_distance(ref, gen), rel=1e-9)
    assert out["alignment"] == pytest.approx(0.4) and 0 <= out["coverage"] <= 1 and "f1" in out
    stats_only = metrics({"inception": gen}, None, gaussian_stats(ref))
    assert stats_only["fid"] == pytest.approx(out["fid"], rel=1e-6) and "precision" not in stats_only
