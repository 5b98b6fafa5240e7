"""A small image classifier for prompt alignment where no CLIP weights exist (docs/evaluation.md).

Alignment = the fraction of generated images that the classifier assigns to the class named in their
prompt. A classifier folder holds ``model.safetensors`` and ``config.json`` with ``width`` and the
``classes`` (names as they appear in prompts); the shipped one is ``models/fashion-classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn


class SmallImageClassifier(nn.Module):
    """Three blocks of two 3x3 conv + BatchNorm + ReLU and a 2x2 max-pool over 32x32 grayscale in [-1, 1]
    (RGB inputs are averaged), then 4*width*16 -> 128 -> classes."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        w = width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, w), block(w, 2 * w), block(2 * w, 4 * w))  # 32 -> 4 px
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * w * 16, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 1 or 3, 32, 32) in [-1, 1] -> logits (N, classes)."""
        x = images.mean(dim=1, keepdim=True) if images.shape[1] == 3 else images
        return self.head(self.features(x))


def load_classifier(directory: str | Path) -> tuple[SmallImageClassifier, list[str]]:
    """(model in eval mode, class names) from a classifier folder."""
    root = Path(directory)
    info = json.loads((root / "config.json").read_text())
    model = SmallImageClassifier(width=info["width"], num_classes=len(info["classes"]))
    model.load_state_dict(load_file(root / "model.safetensors"))
    return model.eval(), list(info["classes"])


def prompt_labels(prompts: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """(N,) index of the class each prompt names: the longest class name found in it ("t-shirt" wins over
    "shirt"); -1 where none is named (such images never count as aligned)."""
    labels = []
    for prompt in prompts:
        text = prompt.lower()
        found = [(len(c), i) for i, c in enumerate(classes) if c.lower() in text]
        labels.append(max(found)[1] if found else -1)
    return torch.tensor(labels, dtype=torch.long)


@torch.no_grad()
def alignment(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: does the classifier put image i (uint8 (N, C, H, W)) in class labels[i]?"""
    predicted = torch.cat([model(b.float() / 127.5 - 1).argmax(1) for b in images_uint8.split(250)])
    return predicted == labels
